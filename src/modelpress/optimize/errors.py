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


def is_task_control(exc: BaseException) -> bool:
    """True for the exceptions a task runner raises *inside* running code to stop it (Celery's soft time
    limit, which is also how a worker that lost its job abandons the run): never bad input.

    Code that turns "any reader error" into a ``UserInputError`` must let these through, or a taken-over
    job would be failed with a misleading message. Matched by module so ``optimize`` needs no Celery.

    Example:
        >>> is_task_control(ValueError("x"))
        False
        >>> from billiard.exceptions import SoftTimeLimitExceeded
        >>> is_task_control(SoftTimeLimitExceeded())
        True
    """
    return any(getattr(t, "__module__", "").split(".")[0] in ("billiard", "celery") for t in type(exc).__mro__)


class DataError(UserInputError, ValueError):
    """A data file that cannot be read or does not fit the model (names, shapes, labels, size)."""
