"""``distill_float``: train the current model (pruned, typically) to reproduce the user's float model.

The teacher is the float model the job started from (``StepContext.reference``), so any source can be
distilled: it needs train rows (``data: {train: ...}``), labels optional. The loss is

* on the outputs: KL divergence at a temperature for logits (``T²``-scaled, Hinton et al.), 1 − cosine for
  embeddings judged by cosine, MSE otherwise; plus cross-entropy on train labels when there are any;
* on hidden states, wherever student and teacher have a layer of the same name whose input has the same shape
  (a transformer's layers keep their names when others are dropped, so the student's layer 3 is matched to
  the teacher's layer 3), and a transformer's last layer's output (what pooling reads, every token): MSE over
  each row's own tokens (not its padding), normalised by the teacher's mean square.

``precision="bfloat16"`` runs the student's forward under CPU autocast (bf16 matrix products, fp32 weights,
optimizer and losses), a transformer's attention kept in float32 (its bf16 backward is slow on CPU);
validation, and so the choice of the best weights, stays in float32.

The teacher's outputs and hidden states on the train rows are computed once before training
(``teacher_cache``; when they fit its byte budget), not at every step.

Bounded by ``max_steps`` and ``max_seconds``. Every ``validate_every`` steps the metric is measured on the
validation rows (never the eval rows), the best weights so far are kept, ``StepContext.progress`` is told,
and the state is checkpointed in ``StepContext.checkpoint_dir`` (written to a temporary file, then renamed):
a worker restart resumes from the last checkpoint with the same batches, it does not train again from the
start. At the end the best weights on validation are returned.

Example:
    >>> from modelpress.optimize.recipes import DistillFloatConfig
    >>> from modelpress.optimize.techniques.registry import handlers
    >>> DistillFloatConfig in handlers()
    True
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import resource
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import fx, nn

from modelpress.errors import UserInputError
from modelpress.optimize.hostcpu import cpu_flags
from modelpress.optimize.measure import as_tuple, compute_metric, count_params, n_samples
from modelpress.optimize.recipes import DistillFloatConfig
from modelpress.optimize.techniques.distillation import hinton_loss
from modelpress.optimize.techniques.registry import StepContext, StepOutput, register_handler
from modelpress.optimize.techniques.teacher_cache import Taps, TeacherCache, hidden_loss, length_mask
from modelpress.optimize.techniques.training import require_trainable
from modelpress.optimize.techniques.transformer_graph import (block_output, find_blocks, with_float32_attention,
                                                             with_output_tap)
from modelpress.optimize.techniques.transformer_pruning import training_view

MAX_MATCH_POINTS = 8
CHECKPOINT_VERSION = 3  # 3: the last layer's output is matched too
FINAL_TAP = "modelpress_final_tap"


def output_loss_kind(cfg: DistillFloatConfig, metric: str) -> str:
    """The output loss ``auto`` stands for, by the model's metric.

    Example:
        >>> output_loss_kind(DistillFloatConfig(), "cosine"), output_loss_kind(DistillFloatConfig(), "accuracy")
        ('cosine', 'kl')
    """
    if cfg.loss != "auto":
        return cfg.loss
    return {"cosine": "cosine", "accuracy": "kl", "top1_agreement": "kl"}.get(metric, "mse")


def output_loss(kind: str, s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, cfg: DistillFloatConfig) -> torch.Tensor:
    """Student outputs ``s`` against teacher outputs ``t`` (and labels, when given and the outputs are logits).

    Example:
        >>> t = torch.tensor([[1.0, 0.0]])
        >>> float(output_loss("cosine", t, t, None, DistillFloatConfig()))
        0.0
    """
    if kind == "kl":
        alpha = 1.0 - cfg.label_weight if labels is not None else 1.0
        return hinton_loss(s, t, labels, temperature=cfg.temperature, alpha=alpha)
    if kind == "cosine":
        return (1 - nn.functional.cosine_similarity(s.flatten(1), t.flatten(1), dim=-1)).mean()
    return nn.functional.mse_loss(s, t)


def final_taps(student: nn.Module, teacher: nn.Module) -> tuple[nn.Module, nn.Module, list[str]]:
    """Student and teacher with their last transformer layer's output tapped (``FINAL_TAP``), and ``[FINAL_TAP]``;
    both unchanged and ``[]`` when either is not a transformer graph or that output cannot be told.

    The layers' own inputs say what every layer but the last computes; the last one's output is what pooling
    (or a head) reads. Matching it per token, beside the pooled output, measured +0.0003 to +0.0005 of
    validation cosine on all-MiniLM-L6-v2 cut to 5 layers of 1,216 neurons (649 s of training, batch 16 and 32).
    The taps are on copies that share the student's modules and parameters: the model the step returns has no
    tap in its graph.

    Example:
        >>> s, t, extra = final_taps(student, teacher)  # doctest: +SKIP
        >>> extra  # doctest: +SKIP
        ['modelpress_final_tap']
    """
    names = []
    for gm in (student, teacher):
        blocks = find_blocks(gm) if isinstance(gm, fx.GraphModule) else []
        node = block_output(gm, blocks[-1]) if blocks else None
        if node is None:
            return student, teacher, []
        names.append(node.name)
    assert isinstance(student, fx.GraphModule) and isinstance(teacher, fx.GraphModule)
    return with_output_tap(student, names[0], FINAL_TAP), with_output_tap(teacher, names[1], FINAL_TAP), [FINAL_TAP]


@torch.no_grad()
def match_points(student: nn.Module, teacher: nn.Module, probe: tuple[torch.Tensor, ...],
                 extra: list[str] | None = None) -> list[str]:
    """Module names whose input has the same shape in student and teacher (hidden states to match).

    A transformer: the input of each kept layer's query projection (the layer's hidden state). Otherwise every
    Linear/Conv module of the same name, the first (the raw input) left out and at most ``MAX_MATCH_POINTS``
    evenly spaced. ``extra`` (taps such as ``FINAL_TAP``) are checked the same way and always kept.

    Example:
        >>> match_points(student, teacher, batch)  # doctest: +SKIP
        ['model.encoder.layer.1.attention.self.query', ...]
    """
    if isinstance(student, torch.fx.GraphModule) and (blocks := find_blocks(student)):
        names = [b.q for b in blocks[1:]]  # layer 0's input is the embeddings, the same in both
    else:
        t_mods = dict(teacher.named_modules())
        names = [n for n, m in student.named_modules()
                 if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and n in t_mods][1:]
    names += [e for e in extra or [] if e not in names]
    if not names:
        return []
    ts, tt = Taps(student, names, detach=True), Taps(teacher, names, detach=True)
    try:
        student(*probe)
        teacher(*probe)
    finally:
        ts.close()
        tt.close()
    ok, seen_ptr = [], set()
    for n in names:
        a, b = ts.seen.get(n), tt.seen.get(n)
        if a is None or b is None or a.shape != b.shape or b.data_ptr() in seen_ptr:
            continue
        seen_ptr.add(b.data_ptr())
        ok.append(n)
    kept_extra = [n for n in ok if n in (extra or [])]
    ok = [n for n in ok if n not in kept_extra]
    if len(ok) > MAX_MATCH_POINTS:
        step = len(ok) / MAX_MATCH_POINTS
        ok = [ok[int(i * step)] for i in range(MAX_MATCH_POINTS)]
    return ok + kept_extra


#: x86 flags of native bf16 arithmetic, which ``precision: auto`` trains in bf16 on. Both are in the artifact key
#: (``artifacts.BUILD_CPU_FLAGS``), so hosts that would train differently never share a result.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def resolve_precision(asked: str, flags: frozenset[str] | None = None) -> str:
    """The precision a run trains in: ``asked``, with ``auto`` made ``bfloat16`` on a CPU with native bf16
    arithmetic (``BF16_CPU_FLAGS``) and ``float32`` elsewhere (without it, bf16 products are emulated and slower).

    Measured with all-MiniLM-L6-v2 cut to 5 layers of 1,216 neurons, 420 s at 2 threads: a Xeon with AMX ran
    4,273 steps in bf16 (attention kept in float32) against 3,183 in float32 (validation cosine 0.9820 against
    0.9814, eval 0.9792 against 0.9785); an AMD EPYC with AVX-512 bf16 ran 9–13 % more (before attention was
    kept in float32).

    Example:
        >>> resolve_precision("auto", frozenset({"avx512_bf16"})), resolve_precision("auto", frozenset({"avx2"}))
        ('bfloat16', 'float32')
    """
    if asked != "auto":
        return asked
    return "bfloat16" if (BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags)) else "float32"


def fused_ok(params: list[torch.Tensor]) -> bool:
    """Whether AdamW's fused kernel can update ``params`` (floating point, on the CPU).

    The fused kernel does the whole update in one pass per tensor; the default (``foreach``) makes several
    passes over every moment. Measured on MiniLM with one layer dropped (batch 32 × 40 tokens, one thread):
    the optimizer step took 185 ms of a 900 ms step, fused 49 ms; the same arithmetic, so the same training.

    Example:
        >>> fused_ok([torch.zeros(2, requires_grad=True)]), fused_ok([torch.zeros(2, dtype=torch.float64)])
        (True, True)
    """
    return bool(params) and all(p.is_floating_point() and p.device.type == "cpu" for p in params)


def freeze_embeddings(model: nn.Module) -> list[nn.Parameter]:
    """Stop training ``model``'s embedding tables (``nn.Embedding``, or what an exported graph's
    ``aten.embedding`` looks up); returns the tables it froze (the caller makes them trainable again).

    A pruned student keeps the teacher's vocabulary and positions: its tables are the teacher's already, and
    training them means a dense gradient and an optimizer update over every row of the vocabulary at each
    step, for the few rows a batch uses.

    Example:
        >>> [tuple(p.shape) for p in freeze_embeddings(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)))]
        [(10, 4)]
    """
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    if isinstance(model, torch.fx.GraphModule):  # an exported graph: the tables are what aten.embedding looks up
        tables += [model.get_parameter(str(node.args[0].target)) for node in model.graph.nodes
                   if node.op == "call_function" and node.target is torch.ops.aten.embedding.default
                   and isinstance(node.args[0], torch.fx.Node) and node.args[0].op == "get_attr"]
    frozen = [p for p in {id(t): t for t in tables}.values() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def lr_factor(step: int, elapsed_s: float, cfg: DistillFloatConfig, warm: int) -> float:
    """The learning rate's multiplier at ``step``: linear warm-up, then linear decay to 5 % over the run.

    The run ends at ``max_steps`` or ``max_seconds``, whichever comes first, so the decay follows whichever is
    further along: a run that time stops is annealed by the time it stops, not cut off at full rate.

    Example:
        >>> cfg = DistillFloatConfig(max_steps=1000, max_seconds=100)
        >>> lr_factor(500, 10.0, cfg, warm=50), lr_factor(500, 75.0, cfg, warm=50)
        (0.5, 0.25)
    """
    done = max(step / cfg.max_steps, elapsed_s / cfg.max_seconds)
    return min(1.0, (step + 1) / warm) * max(0.05, 1.0 - done)


def out_of_reach(state: dict[str, Any], done: float, target: float | None) -> float | None:
    """The run's projected best when it is at least half done and that falls short of ``target``, else None.

    The projection is generous: the best so far plus twice what it gained since a quarter of the run (the
    decaying learning rate makes the second half gain less than that, as a rule). Measured on MiniLM with 420 s
    per level: the level-0.4 student (4 layers) stood at 0.9570 at a quarter and 0.9617 at half, projected
    0.971 against a budget's 0.98, and ended at 0.9644; the level-0.22 student projected 0.988 and ended at 0.9819.

    Example:
        >>> out_of_reach({"best": 0.9617, "best_at_quarter": 0.957}, 0.5, 0.98)
        0.9711
        >>> out_of_reach({"best": 0.979, "best_at_quarter": 0.9745}, 0.5, 0.98) is None
        True
    """
    quarter = state.get("best_at_quarter")
    if target is None or done < 0.5 or quarter is None or state.get("best") is None:
        return None
    projected = state["best"] + 2.0 * (state["best"] - quarter)
    return round(projected, 6) if projected < target else None


def _row_lengths(inputs: tuple[torch.Tensor, ...], trim: Callable[..., tuple[torch.Tensor, ...]]) -> torch.Tensor | None:
    """Each row's length once trimmed (None when trimming keeps every row whole): for batching by length."""
    n = n_samples(inputs)
    if trim(tuple(t[:1] for t in inputs))[0].shape == inputs[0][:1].shape and n and \
            trim(tuple(t[:n] for t in inputs))[0].shape == inputs[0].shape:
        return None
    return torch.tensor([trim(tuple(t[i:i + 1] for t in inputs))[0].shape[1] for i in range(n)])


def epoch_batches(n: int, size: int, lengths: torch.Tensor | None, *, seed: int) -> list[torch.Tensor]:
    """One epoch's batches of row indices, from ``seed`` alone (a resumed run sees the batches it would have).

    With row lengths, rows are shuffled, then sorted by length within groups of 50 batches, so a batch holds
    rows of similar length and trimming removes most padding; the batches are then shuffled.

    Example:
        >>> [b.tolist() for b in epoch_batches(5, 2, None, seed=0)]
        [[4, 0], [1, 3], [2]]
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    if lengths is not None:
        group = size * 50
        parts = [perm[i:i + group] for i in range(0, n, group)]
        perm = torch.cat([p[torch.argsort(lengths[p], stable=True)] for p in parts])
    batches = [perm[i:i + size] for i in range(0, n, size)]
    if lengths is not None:
        batches = [batches[int(i)] for i in torch.randperm(len(batches), generator=g)]
    return batches


def _signature(model: nn.Module, cfg: DistillFloatConfig, n_rows: int) -> str:
    """What a checkpoint must match to be resumed: the step's config, the student it started from, the rows.

    Not its bounds: a search's polishing run is given the time the job has left, which a redelivered job
    computes again; it resumes with the new bound (within one job the recipe fixes every other step's).
    """
    settings = cfg.model_dump_json(exclude={"max_steps", "max_seconds"})
    h = hashlib.sha256(f"v{CHECKPOINT_VERSION}\n{settings}\n{n_rows}\n".encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:".encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a reader sees the previous checkpoint or this one, never half of one


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@register_handler(DistillFloatConfig)
class DistillFloatHandler:
    """Distillation from the float model, with hidden-state matching, validation, progress and resume."""

    def apply(self, model: nn.Module, cfg: DistillFloatConfig, ctx: StepContext) -> StepOutput:
        require_trainable(model, "distill_float")
        if ctx.reference is None:
            raise UserInputError("distill_float needs the float model as teacher, which this run does not provide")
        inputs, labels = ctx.data.train_inputs, ctx.data.train_labels
        if inputs is None or n_samples(inputs) == 0:
            raise UserInputError(f"distill_float: model {ctx.spec.name!r} has no train rows; give them as "
                                 "data: {train: FILE} (labels optional)")
        inputs = as_tuple(inputs)
        n = n_samples(inputs)
        kind = output_loss_kind(cfg, ctx.spec.metric)
        if labels is not None and kind != "kl":
            labels = None  # labels mean classes: they add a task loss to logits only
        started = time.monotonic()
        student, trim, view_note = training_view(model, ctx)
        teacher, _, _ = training_view(copy.deepcopy(ctx.reference).eval(), ctx)
        for p in teacher.parameters():
            p.requires_grad_(False)
        extra: list[str] = []
        if cfg.intermediate_weight > 0:
            student, teacher, extra = final_taps(student, teacher)
        probe = trim(tuple(t[: min(4, n)] for t in inputs))
        points = match_points(student, teacher, probe, extra) if cfg.intermediate_weight > 0 else []
        precision, attention_fp32 = resolve_precision(cfg.precision), 0
        if precision == "bfloat16" and isinstance(student, fx.GraphModule):
            # Last: the copy's attention calls are no longer ones find_blocks reads (see with_float32_attention).
            student, attention_fp32 = with_float32_attention(student)
        val_x, val_y = ctx.data.val_inputs, ctx.data.val_labels
        if val_x is None:  # no validation rows (a registered model's spec): calibration rows, fidelity only
            val_x, val_y = ctx.data.calib_inputs, None
        val_x = as_tuple(val_x)
        t_val = self._outputs(teacher, val_x, trim)
        metric_name = ctx.spec.metric if (ctx.spec.metric != "accuracy" or val_y is not None) else "top1_agreement"

        def validate() -> float:
            return compute_metric(metric_name, self._outputs(student, val_x, trim), labels=val_y, reference=t_val)

        frozen = freeze_embeddings(model) if cfg.embeddings == "freeze" else []
        n_frozen = sum(p.numel() for p in frozen)
        if frozen:
            ctx.log(f"distill_float: {n_frozen} embedding parameters kept as the teacher's (not trained)")
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused_ok(params))
        warm = max(1, min(100, cfg.max_steps // 20))
        sig = _signature(model, cfg, n)
        ckpt = (ctx.checkpoint_dir / f"distill_float-{sig}.pt") if ctx.checkpoint_dir is not None else None
        state = {"step": 0, "elapsed_s": 0.0, "history": [], "best": None, "best_step": 0}
        best_weights: dict[str, torch.Tensor] | None = None
        resumed_from = None
        if ckpt is not None and ckpt.is_file():
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)  # our own file, read as data anyway
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            best_weights = saved["best_weights"]
            state = saved["state"]
            resumed_from = state["step"]
            ctx.log(f"distill_float: resuming at step {resumed_from} from {ckpt.name}")
        metric_start = state.get("metric_start")
        if metric_start is None:
            metric_start = validate()
            state["metric_start"] = metric_start
            # Step 0 is a candidate too: if no step beats the starting weights on validation, they are returned.
            state["best"], state["best_step"] = metric_start, 0
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        base_elapsed = float(state["elapsed_s"])
        lengths = _row_lengths(inputs, trim)
        # The teacher never changes: its outputs on the train rows are computed once (when they fit the budget).
        cache = TeacherCache.build(teacher, inputs, trim, points, lengths)
        ctx.log("distill_float: teacher outputs " + (f"cached for {n} rows ({cache.nbytes / 2**20:.0f} MB)"
                                                     if cache is not None else "computed at every step"))
        t0 = time.monotonic()
        student.train()
        step, stopped_by, last_loss = int(state["step"]), "max_steps", float("nan")
        batches_per_epoch = max(1, math.ceil(n / cfg.batch_size))
        plan: tuple[int, list[torch.Tensor]] = (-1, [])
        s_taps = Taps(student, points, detach=False)
        t_taps = Taps(teacher, points if cache is None else [], detach=True)
        try:
            while step < cfg.max_steps:
                if base_elapsed + time.monotonic() - t0 >= cfg.max_seconds:
                    stopped_by = "max_seconds"
                    break
                epoch, pos = divmod(step, batches_per_epoch)
                if plan[0] != epoch:
                    plan = (epoch, epoch_batches(n, cfg.batch_size, lengths, seed=ctx.seed * 100_003 + epoch))
                idx = plan[1][pos]
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(step, base_elapsed + time.monotonic() - t0, cfg, warm)
                x = trim(tuple(t[idx] for t in inputs))
                length = int(x[0].shape[1]) if lengths is not None and x[0].dim() >= 2 else None
                if cache is not None:
                    t_out, t_hid, mask = cache.get(idx, length)
                else:
                    with torch.no_grad():
                        t_out = teacher(*x)
                    t_hid, mask = t_taps.seen, length_mask(lengths[idx] if lengths is not None else None, length)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                    s_out = student(*x)
                loss = output_loss(kind, s_out.float(), t_out, labels[idx] if labels is not None else None, cfg)
                if points:  # over each row's own tokens: padding is not something to learn
                    hid = [hidden_loss(s_taps.seen[p].float(), t_hid[p], mask) for p in points]
                    loss = loss + cfg.intermediate_weight * torch.stack(hid).mean()
                if not torch.isfinite(loss):
                    raise UserInputError(f"distill_float diverged (loss {float(loss)} at step {step + 1}); lower lr={cfg.lr}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                step += 1
                last_loss = float(loss.detach())
                if step % cfg.validate_every == 0 or step == cfg.max_steps:
                    student.eval()
                    m = validate()
                    student.train()
                    elapsed = base_elapsed + time.monotonic() - t0
                    state["history"].append({"step": step, "loss": round(last_loss, 6), "validation": round(m, 6),
                                             "elapsed_s": round(elapsed, 1)})
                    if m > state["best"]:
                        state["best"], state["best_step"] = m, step
                        best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    state.update(step=step, elapsed_s=elapsed)
                    done = max(step / cfg.max_steps, elapsed / cfg.max_seconds)
                    if state.get("best_at_quarter") is None and done >= 0.25:
                        state["best_at_quarter"] = state["best"]
                    if ckpt is not None:  # before reporting: a step shown as done is one a restart resumes after
                        _save(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "best_weights": best_weights, "state": state})
                    ctx.progress({"step": "distill_float", "iteration": step, "of": cfg.max_steps, "loss": last_loss,
                                  "validation": m, "metric": metric_name, "elapsed_s": round(elapsed, 1)})
                    ctx.log(f"distill_float step {step}/{cfg.max_steps}: loss {last_loss:.4f}, validation "
                            f"{metric_name} {m:.4f} ({elapsed:.0f} s)")
                    projected = out_of_reach(state, done, ctx.target)
                    if projected is not None:
                        stopped_by = "out_of_reach"
                        ctx.log(f"distill_float: stopped at step {step}: validation {metric_name} "
                                f"{state['best']:.4f} cannot reach {ctx.target:.4f} (projected {projected:.4f})")
                        break
        finally:
            s_taps.close()
            t_taps.close()
            for p in frozen:  # frozen for this step's training only: the model it returns is trainable as given
                p.requires_grad_(True)
            student.eval()
            model.eval()
        if best_weights is not None:
            model.load_state_dict(best_weights)
        elapsed = base_elapsed + time.monotonic() - t0
        meta = {"loss": kind, "temperature": cfg.temperature if kind == "kl" else None,
                "labels_used": labels is not None, "train_rows": n, "matched_layers": points,
                "precision": precision, "attention_float32": attention_fp32, "frozen_params": n_frozen,
                "trained_through": view_note, "steps_run": step, "stopped_by": stopped_by, "target": ctx.target,
                # The bounds as run: a search's last level may have had more time than its recipe says.
                "max_steps": cfg.max_steps, "max_seconds": cfg.max_seconds,
                "seconds": round(elapsed, 1), "setup_seconds": round(t0 - started, 1),
                "teacher_cache_mb": round(cache.nbytes / 2**20, 1) if cache is not None else None,
                "peak_rss_mb": round(_peak_rss_mb(), 1), "resumed_from_step": resumed_from,
                "validation_metric_name": metric_name, "validation_before": state["metric_start"],
                "validation_best": state["best"], "best_step": state["best_step"], "history": state["history"],
                "params": count_params(model)}
        ctx.log(f"distill_float: {step} steps in {elapsed:.0f} s ({stopped_by}); validation {metric_name} "
                f"{state['metric_start']:.4f} → {state['best']:.4f} (step {state['best_step']})")
        return StepOutput(model, meta)

    @staticmethod
    @torch.no_grad()
    def _outputs(model: nn.Module, x: tuple[torch.Tensor, ...], trim: Callable[..., tuple[torch.Tensor, ...]],
                 batch: int = 64) -> torch.Tensor:
        was = model.training
        model.eval()
        try:
            outs = [model(*trim(tuple(t[i:i + batch] for t in x))) for i in range(0, n_samples(x), batch)]
        finally:
            model.train(was)
        return torch.cat(outs).float()

    def rebuild(self, model: nn.Module, cfg: DistillFloatConfig, meta: dict[str, Any], *, engine: str) -> nn.Module:
        return model  # training changes values, not structure


__all__ = ["DistillFloatHandler", "FINAL_TAP", "final_taps", "freeze_embeddings", "fused_ok", "lr_factor", "match_points",
           "output_loss", "output_loss_kind"]
