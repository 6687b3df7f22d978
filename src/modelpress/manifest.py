"""Manifests: many models × recipes × target backends in one YAML file, validated whole before any row.

A manifest names each model (a registered factory, optionally with a weights file) and, per model or
under ``defaults``, the recipes to run, the backends to target and an accuracy budget::

    name: zoo-weekly                  # the batch's name (default: the file's stem)
    defaults:
      recipes: [dynamic-int8, prune50-dynamic-int8]
      backends: [fbgemm, qnnpack]
      budget: {max_drop: 0.02}        # its fields override those of each recipe's own budget
    models:
      - mlp                           # shorthand for {model: mlp}
      - model: mlp
        weights: weights/mlp-tuned.safetensors   # relative to this file
        budget: {max_drop: 0.0}
      - model: digits_cnn
        recipes:
          - dynamic-int8
          - recipes/prune30.yaml      # a recipe file, relative to this file
          - name: prune20-int8        # or a recipe written inline
            steps: [{type: prune_l1_unstructured, amount: 0.2}, {type: quantize_dynamic}]

``modelpress submit manifest.yaml`` checks the whole file first — YAML syntax, field types, unknown
fields, empty lists, negative budgets, unknown models/recipes/backends, missing weights files,
duplicate keys and duplicate jobs — and reports every problem with its line number and field; if there
is any, nothing is written or enqueued. Otherwise it creates one batch (kind ``manifest``) with one job
per model × recipe × backend; a job whose result already exists is reused (see ``Producer.submit_batch``)
unless ``--force``.

A model can also be given by its files, with its own data (issue 9; docs/your-models.md)::

    models:
      - model: hf:models/intent-classifier          # a folder written by save_pretrained
        data: {eval: data/intent-eval.jsonl, calibration: data/intent-calib.jsonl}
        max_length: 64
      - model: torchvision:resnet18
        weights: weights/resnet18-finetuned.safetensors
        data: {eval: data/val-images/, calibration: data/calib-images/}
        preprocess: {resize: 256, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
      - model: export:models/ranker.pt2             # torch.export.save
        data: {eval: data/ranker-eval.safetensors, train: data/ranker-train.safetensors}
        latency_batches: [1, 64]
        recipes: [qat-int8]                         # training steps need data.train

Their files are checked without torch (missing files, remote-code configs, unknown architecture
names, unreadable data, labels outside the class count, steps the source cannot take), each problem
at its line, then staged into the artifact store when the batch is submitted.

The YAML itself is read by ``manifest_yaml`` (bounded against alias bombs, with the line of every field);
this module holds the schema and turns the entries into job requests.

Example:
    >>> from modelpress.settings import Settings
    >>> plan = parse_manifest("models: [mlp]\\ndefaults: {recipes: [dynamic-int8], backends: [fbgemm, qnnpack]}",
    ...                       settings=Settings(home="/tmp/mp-doc"))
    >>> [(r.model, r.recipe.name, r.backend) for r in plan.requests]
    [('mlp', 'dynamic-int8', 'fbgemm'), ('mlp', 'dynamic-int8', 'qnnpack')]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelpress.errors import UserInputError
from modelpress.manifest_yaml import Issue, Loc, ManifestError, YamlLines, format_loc, load_yaml
from modelpress.optimize.recipes import BUILTIN_RECIPES, Budget, Recipe, RecipeError, resolve_recipe

if TYPE_CHECKING:
    from modelpress.api import JobRequest, Producer
    from modelpress.settings import Settings

MANIFEST_VERSION = 1


# ----------------------------------------------------------------------------- the schema
def _recipe_ref(v: Any) -> Any:
    if isinstance(v, str):
        if not v.strip():
            raise ValueError("a recipe name must not be empty")
        return v
    if isinstance(v, dict):
        return v
    raise ValueError(f"must be a recipe name, a recipe file or an inline recipe mapping, not {type(v).__name__}")


# A recipe name (built-in), a .json/.yaml recipe file, or an inline recipe mapping.
RecipeRef = Annotated[Any, AfterValidator(_recipe_ref)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Defaults(_Strict):
    """What every model runs unless its entry says otherwise."""

    recipes: list[RecipeRef] | None = Field(default=None, min_length=1, description="Recipe names, files or inline recipes.")
    backends: list[str] | None = Field(default=None, min_length=1, description="Target backends (queues).")
    budget: Budget | None = Field(default=None, description="Largest allowed metric drop; the fields given override the recipe's.")
    runtime: str | None = Field(default=None, description="torch | onnxruntime | openvino | auto; overrides the recipe's.")

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, v: str | None) -> str | None:
        from modelpress.optimize.runtimes.registry import AUTO, runtime_names

        if v is not None and v != AUTO and v not in runtime_names():
            raise ValueError(f"unknown runtime {v!r}; known: {', '.join(runtime_names() + [AUTO])}")
        return v


class DataEntry(_Strict):
    """A model's own data files (issue 9), relative to the manifest."""

    eval: str = Field(min_length=1, description="Held-out data the reported metric is computed on.")
    calibration: str | None = Field(default=None, min_length=1,
                                    description="Data for calibration and choices (default: a seeded part of eval).")
    train: str | None = Field(default=None, min_length=1,
                              description="Training data for finetune/qat/distill, in eval's format (labels "
                                          "optional); rows also in eval are dropped.")


class ModelEntry(Defaults):
    """One model: a registered factory name or a model given by its files, and overrides of ``defaults``."""

    model: str = Field(min_length=1, max_length=4096,
                       description="Registered model, module:function, hf:PATH, torchvision:NAME, timm:NAME or "
                                   "export:PATH.pt2.")
    weights: str | None = Field(default=None, min_length=1, description="State dict file, relative to the manifest.")
    data: DataEntry | None = Field(default=None, description="eval (and calibration, train) data files or folders.")
    preprocess: dict[str, Any] | None = Field(default=None, description="Images: resize, crop, mean, std.")
    metric: Literal["accuracy", "top1_agreement", "cosine"] | None = Field(default=None,
                                                                          description="Override the metric.")
    max_length: int | None = Field(default=None, gt=0, le=65536, description="Text: tokenizer max_length.")
    latency_batches: list[int] | None = Field(default=None, min_length=1, description="Batch sizes timed.")
    primary_output: str | None = Field(default=None, min_length=1, max_length=48,
                                       description="export: with several outputs: the one carrying the budget.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # "- mlp" is the common case; it means {model: mlp}.
        return {"model": data} if isinstance(data, str) else data


class ManifestFile(_Strict):
    """The whole file."""

    version: int = Field(default=MANIFEST_VERSION, ge=1, le=MANIFEST_VERSION)
    name: str | None = Field(default=None, min_length=1, max_length=200, description="Batch name.")
    defaults: Defaults = Field(default_factory=Defaults)
    models: list[ModelEntry] = Field(min_length=1)


_FIELDS: dict[str, tuple[str, ...]] = {
    "file": tuple(ManifestFile.model_fields), "defaults": tuple(Defaults.model_fields),
    "model": ("model", "weights", "data", "preprocess", "metric", "max_length", "latency_batches", "primary_output",
              "recipes",
              "backends", "budget", "runtime"),
    "budget": tuple(Budget.model_fields), "data": tuple(DataEntry.model_fields),
}


def _allowed_fields(loc: Loc) -> tuple[str, ...]:
    parent = loc[:-1]
    if not parent:
        return _FIELDS["file"]
    if parent[-1] == "budget":
        return _FIELDS["budget"]
    if parent[-1] == "data":
        return _FIELDS["data"]
    if parent == ("defaults",):
        return _FIELDS["defaults"]
    if len(parent) == 2 and parent[0] == "models":
        return _FIELDS["model"]
    return ()


def _pydantic_issues(err: ValidationError, lines: YamlLines) -> list[Issue]:
    issues = []
    for e in err.errors():
        loc: Loc = tuple(p for p in e["loc"] if isinstance(p, int) or not str(p).startswith(("function-", "lax-")))
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc)
            msg = "unknown field" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] in ("too_short", "list_too_short") and e.get("input") == []:
            msg = "must not be empty"
        elif len(loc) == 2 and loc[0] == "models" and e["type"] in ("model_type", "dict_type"):
            msg = "must be a model name or a mapping such as {model: mlp, weights: w.safetensors}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        issues.append(Issue(lines.line(loc), loc, msg))
    return issues


def _parse_part(cls: type[BaseModel], raw: Any) -> Any:
    try:
        return cls.model_validate(raw)
    except ValidationError:
        return None


# ----------------------------------------------------------------------------- the plan
@dataclass
class ManifestPlan:
    """A validated manifest: the batch name and one ``JobRequest`` per model × recipe × backend."""

    name: str
    source: str
    requests: list["JobRequest"] = field(default_factory=list)


def _resolve_recipe(ref: Any, base_dir: Path) -> Recipe:
    if isinstance(ref, dict):
        return Recipe.from_dict(ref)
    if ref in BUILTIN_RECIPES:
        return resolve_recipe(ref)
    path = Path(ref)
    if path.suffix.lower() in {".json", ".yaml", ".yml"} and not path.is_absolute():
        path = base_dir / path
    return resolve_recipe(str(path))


_SOURCE_FIELDS = ("data", "preprocess", "metric", "max_length", "latency_batches", "primary_output")


def _entry_ref(validator: "Producer", entry: ModelEntry, base: Path, here: Loc, problem: Any) -> Any:
    """The entry's checked ``ModelRef`` (paths relative to the manifest), or None after listing its problems."""
    from modelpress.intake import IntakeError

    try:
        return validator.model_ref(
            model=entry.model, weights=entry.weights, base_dir=base,
            data=entry.data.model_dump() if entry.data is not None else None, preprocess=entry.preprocess,
            metric=entry.metric, max_length=entry.max_length, latency_batches=entry.latency_batches,
            primary_output=entry.primary_output)
    except IntakeError as e:
        for loc, message in e.problems:
            problem(here + loc, message)
    except UserInputError as e:
        # A reference that does not parse (e.g. an hf model without data): its message names the field.
        problem(here + (("data",) if "data" in str(e) and entry.data is None else ("model",)), str(e))
    return None


def merged_budget(own: Budget | None, given: Budget) -> Budget:
    """The fields a manifest gives (``given``) over the recipe's ``own`` budget, the rest kept from it.

    A recipe's budget can carry more than its drop (``prune-distill-int8``: no float layers, a confidence
    bound); a manifest that only says ``max_drop`` changes only that.

    Example:
        >>> merged_budget(Budget(max_drop=0.02, max_float_layers=0, confidence=0.9), Budget(max_drop=0.05))
        Budget(max_drop=0.05, relative=False, max_float_layers=0, sensitivity_samples=64, confidence=0.9, sensitivity_method='leave_one_float')
    """
    if own is None:
        return given
    return own.model_copy(update={k: getattr(given, k) for k in given.model_fields_set})


def parse_manifest(text: str, *, settings: "Settings", base_dir: str | Path = ".",
                   filename: str = "manifest.yaml", producer: "Producer | None" = None) -> ManifestPlan:
    """Validate a manifest's text completely; raise ``ManifestError`` listing every problem.

    Relative weights and recipe files are resolved against ``base_dir`` (the manifest's folder). Each
    job also goes through ``Producer.validate``, so a manifest refuses exactly what ``modelpress submit
    --model ...`` refuses (e.g. a truncated weights file, a recipe time limit above the deployment's).

    Example:
        >>> parse_manifest("models: [mlp]\\ndefaults: {recipes: [dynamic-int8], backends: [tpu]}",
        ...                settings=Settings(home="/tmp/mp-doc"))  # doctest: +SKIP
        ManifestError: manifest.yaml is invalid (1 problem); nothing was submitted:
          manifest.yaml:2: defaults.backends[0]: unknown backend 'tpu'; choose one of: fbgemm, qnnpack
    """
    from modelpress.api import Producer, check_model_name, model_has_source_prefix
    from modelpress.intake import IntakeError
    from modelpress.errors import ModelLoadError
    from modelpress.workers.routing import route_for

    base = Path(base_dir).resolve()
    size = len(text.encode("utf-8", errors="replace"))
    if size > settings.max_manifest_bytes:
        raise ManifestError(filename, [Issue(None, (), f"the manifest is {size} bytes, over the limit of "
                                       f"{settings.max_manifest_bytes} bytes (MODELPRESS_MAX_MANIFEST_BYTES); "
                                       "split it into several batches")])
    data, lines = load_yaml(text, filename, max_nodes=settings.max_manifest_nodes)
    issues: list[Issue] = list(lines.duplicates)
    if not isinstance(data, dict):
        issues.append(Issue(1, (), f"the manifest must be a mapping with a `models` list, not {type(data).__name__}"))
        raise ManifestError(filename, issues)
    try:
        ManifestFile.model_validate(data)
    except ValidationError as e:
        issues += _pydantic_issues(e, lines)
    # Parts are also parsed one by one, so that a type error in one entry does not hide an unknown
    # model or a missing weights file in another: the author fixes the file in one round.
    parsed_defaults = _parse_part(Defaults, data.get("defaults", {}))
    defaults = parsed_defaults or Defaults()
    raw_models = data.get("models")
    entries = [_parse_part(ModelEntry, raw) for raw in raw_models] if isinstance(raw_models, list) else []

    def problem(loc: Loc, message: str) -> None:
        issues.append(Issue(lines.line(loc), loc, message))

    # Each recipe/backend reference is checked once, where it is written, and reused below.
    recipes: dict[Loc, Recipe | None] = {}
    backends_ok: dict[Loc, bool] = {}

    def check_recipes(owner: Loc, refs: Any) -> None:
        for i, ref in enumerate(refs if isinstance(refs, list) else []):
            if not isinstance(ref, (str, dict)) or not ref:
                continue  # a type error, already listed by the schema check
            try:
                recipes[owner + ("recipes", i)] = _resolve_recipe(ref, base)
            except RecipeError as e:
                recipes[owner + ("recipes", i)] = None
                problem(owner + ("recipes", i), str(e).replace("Value error, ", ""))

    def check_backends(owner: Loc, names: Any) -> None:
        seen: set[str] = set()
        for i, b in enumerate(names if isinstance(names, list) else []):
            loc = owner + ("backends", i)
            if not isinstance(b, str):
                continue
            try:
                route_for(b)
                backends_ok[loc] = True
            except ValueError as e:
                backends_ok[loc] = False
                problem(loc, str(e))
            if b in seen:
                problem(loc, f"backend {b!r} is listed twice")
            seen.add(b)

    raw_defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    check_recipes(("defaults",), raw_defaults.get("recipes"))
    check_backends(("defaults",), raw_defaults.get("backends"))

    from modelpress.api import registered_model_names

    # The entry-point registry is read once per manifest (it costs milliseconds per read).
    registered = registered_model_names()
    owns_producer = producer is None
    validator = producer or Producer(settings)  # validate() reads settings only; no connection is made
    requests: list[JobRequest] = []
    seen_jobs: dict[tuple[str, str | None, str, str, str | None], Loc] = {}
    for m, entry in enumerate(entries):
        here: Loc = ("models", m)
        # Checked from the raw mapping, so an entry with a schema error still gets its names checked.
        raw = raw_models[m]
        raw = {"model": raw} if isinstance(raw, str) else raw if isinstance(raw, dict) else {}
        known_before = len(issues)
        # A model given by its files (issue 9): its files are checked once here, whatever it runs with.
        from_files = entry is not None and (model_has_source_prefix(entry.model) or any(
            getattr(entry, f) is not None for f in _SOURCE_FIELDS))
        ref = _entry_ref(validator, entry, base, here, problem) if from_files else None
        if not from_files and isinstance(raw.get("model"), str) and raw["model"] and not model_has_source_prefix(
                raw["model"]):
            try:
                check_model_name(raw["model"], settings.factory_allowlist, registered=registered)
            except UserInputError as e:
                problem(here + ("model",), str(e))
        weights: str | None = None
        if not from_files and isinstance(raw.get("weights"), str) and raw["weights"]:
            p = Path(raw["weights"]).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                problem(here + ("weights",), f"weights file {raw['weights']!r} does not exist (looked for {p})")
            elif p.stat().st_size > settings.max_weights_bytes:
                problem(here + ("weights",), f"weights file {p.name} is {p.stat().st_size} bytes, over the limit of "
                                             f"{settings.max_weights_bytes} bytes (MODELPRESS_MAX_WEIGHTS_BYTES)")
            else:
                weights = str(p)
        model_ok = len(issues) == known_before and (ref is not None or not from_files)
        check_recipes(here, raw.get("recipes"))
        check_backends(here, raw.get("backends"))
        if entry is None or not model_ok:
            continue  # its problems are already listed; no jobs from a broken entry

        recipe_owner = here if entry.recipes is not None else ("defaults",)
        backend_owner = here if entry.backends is not None else ("defaults",)
        recipe_refs = entry.recipes if entry.recipes is not None else defaults.recipes
        backend_names = entry.backends if entry.backends is not None else defaults.backends
        if parsed_defaults is None:
            continue  # broken defaults (already listed): what this model inherits is unknown
        if recipe_refs is None:
            problem(here, "no recipes: give `recipes` for this model or under `defaults`")
        if backend_names is None:
            problem(here, "no backends: give `backends` for this model or under `defaults`")
        if recipe_refs is None or backend_names is None:
            continue
        budget = entry.budget if entry.budget is not None else defaults.budget
        runtime = entry.runtime if entry.runtime is not None else defaults.runtime
        for r in range(len(recipe_refs)):
            recipe = recipes.get(recipe_owner + ("recipes", r))
            if recipe is None:
                continue
            if budget is not None:
                recipe = recipe.model_copy(update={"budget": merged_budget(recipe.budget, budget)})
            for b, backend in enumerate(backend_names):
                if not backends_ok.get(backend_owner + ("backends", b)):
                    continue
                key = (ref.to_json() if ref is not None else entry.model, weights, recipe.sha256, backend, runtime)
                if key in seen_jobs:
                    problem(here, f"the job {entry.model} × {recipe.name} × {backend} is already listed at "
                                  f"{format_loc(seen_jobs[key])} (line {lines.line(seen_jobs[key])})")
                    continue
                seen_jobs[key] = here
                try:
                    requests.append(validator.validate(model=entry.model, recipe=recipe, backend=backend,
                                                       weights=weights, ref=ref, registered=registered,
                                                       runtime=runtime))
                except IntakeError as e:
                    for loc, message in e.problems:  # a step this source cannot take: point at the recipe
                        problem(recipe_owner + ("recipes", r) if loc == ("recipes",) else here + loc, message)
                except UserInputError as e:
                    # Whatever the field checks above did not cover; name the field most likely at fault.
                    field_loc = (here + ("weights",) if isinstance(e, ModelLoadError) and weights
                                 else recipe_owner + ("recipes", r) if "recipe" in str(e) else here)
                    problem(field_loc, str(e))
    if owns_producer:
        validator.close()
    if issues:
        unique = list(dict.fromkeys(issues))
        raise ManifestError(filename, sorted(unique, key=lambda i: (i.line or 0, format_loc(i.loc))))
    name = data.get("name") or Path(filename).stem
    return ManifestPlan(name=name, source=filename, requests=requests)


def load_manifest(path: str | Path, *, settings: "Settings", producer: "Producer | None" = None) -> ManifestPlan:
    """Read and validate a manifest file (see ``parse_manifest``).

    Example:
        >>> plan = load_manifest("zoo.yaml", settings=Settings())  # doctest: +SKIP
        >>> len(plan.requests)  # doctest: +SKIP
        20
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > settings.max_manifest_bytes:
            # Refused before reading: a huge file must not be loaded into memory to be rejected.
            raise ManifestError(str(path), [Issue(None, (), f"the manifest is {size} bytes, over the limit of "
                                            f"{settings.max_manifest_bytes} bytes (MODELPRESS_MAX_MANIFEST_BYTES); "
                                            "split it into several batches")])
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(str(path), [Issue(None, (), "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(str(path), [Issue(None, (), f"cannot be read ({e})")]) from None
    plan = parse_manifest(text, settings=settings, base_dir=p.resolve().parent, filename=str(path), producer=producer)
    plan.source = p.name  # the batch row: the file's name, never where the submitter keeps it (issue 20)
    return plan


def submit_manifest(producer: "Producer", path: str | Path, *, force: bool = False) -> int:
    """``modelpress submit manifest.yaml``: validate everything, then one batch of jobs; an exit code.

    Prints the batch id on stdout (for scripts) and a summary on stderr. Exit 2, with every problem
    listed and nothing written, when the manifest is invalid.

    Example:
        >>> submit_manifest(Producer(Settings()), "zoo.yaml")  # doctest: +SKIP
        0
    """
    try:
        plan = load_manifest(path, settings=producer.settings, producer=producer)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sub = producer.submit_batch(plan.requests, name=plan.name, kind="manifest", source=plan.source, reuse=not force,
                                force=force)
    backends = sorted({r.backend for r in plan.requests})
    print(f"batch {sub.batch_id} ({plan.name!r}): {len(sub.job_ids)} jobs, {len(sub.enqueued)} enqueued, "
          f"{len(sub.reused)} reused from earlier results, across {', '.join(backends)}\n"
          f"follow it with: modelpress wait --batch {sub.batch_id}", file=sys.stderr)
    print(sub.batch_id)
    return 0


__all__ = ["DataEntry", "Defaults", "ManifestFile", "ManifestPlan", "ModelEntry", "load_manifest", "parse_manifest",
           "submit_manifest"]
