"""The torch layer: measure, quantize, prune, distill. Knows nothing of Celery or the database.

Example:
    >>> from modelpress.optimize import optimize_model, resolve_recipe  # doctest: +SKIP
    >>> optimize_model(model_name="digits_cnn", recipe=resolve_recipe("dynamic-int8"),
    ...                engine="fbgemm", store="/tmp/mp")  # doctest: +SKIP
"""

from modelpress.optimize.errors import ModelLoadError, RecipeError, UnknownModelError, UserInputError
from modelpress.optimize.pipeline import OptimizeResult, optimize_model
from modelpress.optimize.recipes import Recipe, resolve_recipe

__all__ = ["ModelLoadError", "OptimizeResult", "Recipe", "RecipeError", "UnknownModelError",
           "UserInputError", "optimize_model", "resolve_recipe"]
