"""The two kinds of failure, sorted once.

``UserInputError``: the input is wrong (corrupt weights, unknown model, bad recipe, shape mismatch).
Retrying cannot help, so the job fails at once with the message, which must tell a person what to fix.
Anything else raised from ``optimize`` is a bug or an environment fault; ``tasks`` decides about retries.
"""

from __future__ import annotations


class UserInputError(Exception):
    """Bad input: fail the job with this message, never retry."""


class RecipeError(UserInputError, ValueError):
    """A recipe that cannot be parsed or validated; the message names the field."""


class UnknownModelError(UserInputError, LookupError):
    """No registered, allow-listed factory has this name."""


class ModelLoadError(UserInputError):
    """Weights that cannot be read safely or do not fit the architecture."""


class BudgetError(UserInputError):
    """An accuracy budget that is itself invalid (negative, NaN)."""


class DataError(UserInputError, ValueError):
    """A data file that cannot be read or does not fit the model (names, shapes, labels, size)."""
