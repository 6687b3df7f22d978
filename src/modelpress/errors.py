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


class MemoryCeilingError(UserInputError):
    """A job that needed more memory than its worker's per-job ceiling (``MODELPRESS_JOB_MEMORY_LIMIT``).

    The same job fails the same way on every try, so it is failed at once, never retried as a lost worker.
    ``recorded`` is True when the worker's memory watchdog stopped the job: the watchdog writes the failure
    to the job's row itself, and the task writes it only if that write did not land.

    Example:
        >>> e = MemoryCeilingError("the job needed more than its memory ceiling of 1.50 GiB")
        >>> isinstance(e, UserInputError), e.recorded
        (True, False)
    """

    def __init__(self, message: str, *, recorded: bool = False) -> None:
        super().__init__(message)
        self.recorded = recorded
