"""Recipes are data: every registered step type round-trips through JSON and YAML; bad input names its field."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from modelpress.errors import RecipeError, UserInputError
from modelpress.optimize.recipes import BUILTIN_RECIPES, Recipe, parse_step, resolve_recipe, step_types
from modelpress.optimize.techniques.registry import handlers


def _sample(schema: dict[str, Any], prop: dict[str, Any]) -> Any:
    # A valid value for a *required* field, derived from its JSON schema (so new step types need no edit here).
    if "$ref" in prop:
        prop = schema["$defs"][prop["$ref"].split("/")[-1]]
    kind = prop.get("type")
    if kind == "number":
        lo = prop.get("exclusiveMinimum", prop.get("minimum", 0.0))
        hi = prop.get("exclusiveMaximum", prop.get("maximum", lo + 2.0))
        return (lo + hi) / 2
    if kind == "integer":
        return max(1, prop.get("minimum", 1))
    if kind == "boolean":
        return True
    if kind == "string":
        return prop["enum"][0] if "enum" in prop else "x"
    if "enum" in prop:
        return prop["enum"][0]
    raise AssertionError(f"no sample value for required field schema {prop}")


# Steps whose own check needs more than their required fields (prune_transformer must cut something).
_BEYOND_REQUIRED: dict[str, dict[str, Any]] = {"prune_transformer": {"ffn": 0.5}}


def _minimal_step(name: str) -> dict[str, Any]:
    cls = step_types()[name]
    schema = cls.model_json_schema()
    props = schema.get("properties", {})
    return {"type": name, **{f: _sample(schema, props[f]) for f in schema.get("required", [])},
            **_BEYOND_REQUIRED.get(name, {})}


@pytest.mark.parametrize("name", sorted(step_types()))
def test_every_registered_step_type_round_trips_through_json_and_yaml(name):
    recipe = Recipe.from_dict({"name": f"rt-{name}", "steps": [_minimal_step(name)]})
    assert recipe.steps[0].type == name
    assert Recipe.from_json(recipe.to_json()) == recipe
    again = Recipe.from_yaml(yaml.safe_dump(recipe.to_dict()))
    assert again == recipe and again.sha256 == recipe.sha256
    # Every field is written out (defaults included), so the canonical JSON pins the whole config.
    assert set(json.loads(recipe.to_json())["steps"][0]) == {"type", *type(recipe.steps[0]).model_fields}


@pytest.mark.parametrize("name", sorted(BUILTIN_RECIPES))
def test_every_builtin_recipe_validates_round_trips_and_has_a_handler_for_each_step(name):
    recipe = resolve_recipe(name)
    assert recipe.name == name
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_yaml(yaml.safe_dump(recipe.to_dict())) == recipe
    missing = [s.type for s in recipe.steps if type(s) not in handlers()]
    assert not missing, f"recipe {name} uses step types without a registered handler: {missing}"


@pytest.mark.parametrize("name", ["prune_structured", "finetune", "distill", "prune_l1_unstructured"])
def test_non_default_values_of_the_training_and_pruning_steps_survive_the_round_trip(name):
    values = {
        "prune_structured": {"amount": 0.3, "importance": "l1", "global_ranking": True, "ignore": ["fc2"]},
        "finetune": {"epochs": 7, "lr": 0.01, "batch_size": 16, "target": "reference"},
        "distill": {"student": "mine", "width": 0.25, "temperature": 2.0, "alpha": 0.5, "epochs": 3,
                    "lr": 0.01, "batch_size": 8, "compare_baseline": False},
        "prune_l1_unstructured": {"amount": 0.9, "scope": "global", "module_types": ["Linear"]},
    }[name]
    step = parse_step({"type": name, **values})
    assert {k: v for k, v in step.to_dict().items() if k in values} == values
    recipe = Recipe.from_dict({"name": "nd", "steps": [step.to_dict()]})
    assert Recipe.from_yaml(yaml.safe_dump(recipe.to_dict())).steps[0] == step


def test_an_unknown_step_type_is_refused_with_the_field_and_the_known_types():
    with pytest.raises(RecipeError) as e:
        Recipe.from_dict({"name": "x", "steps": [{"type": "quantize_dynamic"}, {"type": "prune_magic"}]})
    assert "steps.1.type" in str(e.value) and "prune_magic" in str(e.value) and "prune_structured" in str(e.value)
    assert isinstance(e.value, UserInputError)


@pytest.mark.parametrize("name", sorted(step_types()))
def test_an_unknown_field_is_refused_naming_the_field_for_every_step_type(name):
    with pytest.raises(RecipeError, match=r"steps\.0\.amunt"):
        Recipe.from_dict({"name": "x", "steps": [{**_minimal_step(name), "amunt": 0.5}]})


@pytest.mark.parametrize(("step", "field"), [
    ({"type": "prune_structured", "amount": 1.5}, "steps.0.amount"),
    ({"type": "prune_structured"}, "steps.0.amount"),
    ({"type": "finetune", "epochs": 0}, "steps.0.epochs"),
    ({"type": "finetune", "target": "teacher"}, "steps.0.target"),
    ({"type": "distill", "alpha": 1.2}, "steps.0.alpha"),
    ({"type": "distill", "width": 0}, "steps.0.width"),
    ({"type": "prune_l1_unstructured", "amount": 0.5, "scope": "row"}, "steps.0.scope"),
])
def test_out_of_range_values_are_refused_naming_the_field(step, field):
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        Recipe.from_dict({"name": "x", "steps": [step]})


def test_a_recipe_without_steps_or_with_bad_json_or_yaml_is_refused():
    with pytest.raises(RecipeError, match="steps"):
        Recipe.from_dict({"name": "x", "steps": []})
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.from_json("{")
    with pytest.raises(RecipeError, match="not valid YAML"):
        Recipe.from_yaml("steps: [")
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        resolve_recipe("nope")


def test_a_recipe_file_in_yaml_resolves_to_the_same_recipe_as_its_json(tmp_path):
    recipe = resolve_recipe("prune50-finetune")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe.to_dict()))
    (tmp_path / "r.json").write_text(recipe.to_json())
    assert resolve_recipe(str(tmp_path / "r.yaml")) == resolve_recipe(str(tmp_path / "r.json")) == recipe


@pytest.mark.parametrize("name", sorted(BUILTIN_RECIPES))
def test_every_builtin_recipe_carries_a_budget_one_percent_unless_it_says_otherwise(name):
    budget = resolve_recipe(name).budget
    assert budget is not None
    if name.endswith(("-fallback", "-auto")):  # these write their own: 0.01 absolute with a measured fallback
        assert budget.max_drop == 0.01 and budget.max_float_layers == 8
    elif name.endswith("-weight-only"):  # a causal LM's: perplexity may rise 1 % (int8) or 5 % (int4)
        assert (budget.max_drop, budget.relative) == ({"int8-weight-only": 0.01, "int4-weight-only": 0.05}[name], True)
    elif resolve_recipe(name).search is not None:  # the searched ones: 0.02 absolute, the level does the fitting
        assert (budget.max_drop, budget.relative, budget.max_float_layers) == (0.02, False, 0)
    else:
        assert (budget.max_drop, budget.relative, budget.max_float_layers) == (0.01, True, 0)


def test_the_mlp_after_prune50_dynamic_int8_is_rejected_with_its_reason(tmp_path):
    from modelpress.optimize.job import optimize_model

    r = optimize_model(model_name="mlp", recipe=resolve_recipe("prune50-dynamic-int8"), engine="fbgemm",
                       store=tmp_path, warmup=1, runs=3)
    assert r.status == "rejected" and r.metric_after < 0.6
    assert r.reason.startswith("top1_agreement fell from 1.0000 to 0.4") and "more than the budget allows (0.0100)" in r.reason
    assert "/rejected/" in r.artifact_path


def test_a_search_without_polishing_keeps_the_recipe_json_it_always_had_and_one_with_it_says_so() -> None:
    base = {"name": "s", "runtime": "auto", "steps": [{"type": "prune", "level": 0.4}, {"type": "quantize_static"}]}
    plain = Recipe.from_dict({**base, "search": {"levels": [0.2, 0.4]}})
    polished = Recipe.from_dict({**base, "search": {"levels": [0.2, 0.4], "polish_seconds": 600}})
    assert json.loads(plain.to_json())["search"] == {"levels": [0.4, 0.2]}
    assert json.loads(polished.to_json())["search"] == {"levels": [0.4, 0.2], "polish_seconds": 600.0}
    assert plain.sha256 != polished.sha256
    with pytest.raises(Exception, match="polish_seconds"):
        Recipe.from_dict({**base, "search": {"levels": [0.2], "polish_seconds": -1}})


def test_a_budget_without_a_confidence_keeps_the_hash_it_had_and_one_with_it_hashes_apart() -> None:
    plain = Recipe.from_dict({"name": "b", "steps": [{"type": "quantize_dynamic"}], "budget": {"max_drop": 0.02}})
    bound = Recipe.from_dict({"name": "b", "steps": [{"type": "quantize_dynamic"}],
                              "budget": {"max_drop": 0.02, "confidence": 0.9}})
    assert "confidence" not in json.loads(plain.to_json())["budget"]
    assert json.loads(bound.to_json())["budget"]["confidence"] == 0.9
    assert plain.sha256 != bound.sha256
    assert Recipe.from_json(bound.to_json()) == bound
    with pytest.raises(RecipeError, match="confidence"):
        Recipe.from_dict({"name": "b", "steps": [{"type": "quantize_dynamic"}],
                          "budget": {"max_drop": 0.02, "confidence": 1.0}})
