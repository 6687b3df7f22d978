"""Per-layer sensitivity is measured, ranks the layer that really hurts first, and leaves models intact."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

from modelpress.optimize.backends import get_backend, quantized_engine
from modelpress.errors import UserInputError
from modelpress.optimize.measure import predict
from modelpress.optimize.recipes import StaticQuantConfig
from modelpress.optimize.techniques.registry import StepContext, apply_step, handler_for
from modelpress.optimize.techniques.sensitivity import relative_error, requantize_sensitivity, swap_sensitivity
from modelpress.optimize.spec import ModelSpec, TaskData


def outlier_mlp() -> nn.Sequential:
    """A 3-layer MLP whose middle layer has one huge weight on an input that is always 0.

    The float model never feels the outlier, but a per-tensor int8 scale for that layer is set by it and
    rounds every other weight of the layer to zero: that layer, and only that one, is very sensitive.
    """
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        m[0].weight[0].zero_()
        m[0].bias[0] = -1.0  # ReLU(-1) = 0: input 0 of layer "2" is always zero
        m[2].weight[0, 0] = 200.0
    return m.eval()


def _inputs(n: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def _dynamic(model: nn.Module, keep: tuple[str, ...] = ()) -> nn.Module:
    return get_backend().quantize_dynamic(model, engine="fbgemm", per_channel=False, module_types=("Linear",),
                                          keep_float=keep)


def test_relative_error_is_zero_for_identical_outputs_and_scale_free():
    y = torch.randn(10, 3)
    assert relative_error(y, y) == 0.0
    assert relative_error(2 * y, y) == pytest.approx(1.0)
    assert relative_error(20 * y, 10 * y) == pytest.approx(relative_error(2 * y, y))


@pytest.mark.parametrize("method", ["leave_one_float", "quantize_one"])
def test_swap_sensitivity_ranks_the_outlier_layer_first(method):
    f = outlier_mlp()
    q = _dynamic(f)
    x = _inputs()
    ref = f(x).detach()
    rep = swap_sensitivity(f, q, ["0", "2", "4"], x, reference=ref, method=method)
    assert rep.ranking()[0] == "2"
    assert rep.method == method and rep.samples == 128
    by_name = {s.name: s for s in rep.layers}
    assert by_name["2"].effect > 10 * max(by_name["0"].effect, by_name["4"].effect)
    if method == "leave_one_float":
        # Measured, not guessed: the baseline is the all-int8 error, and "2" float removes most of it.
        assert rep.baseline_error == pytest.approx(relative_error(predict(q, x), ref))
        assert by_name["2"].error < 0.1 * rep.baseline_error
    else:
        assert rep.baseline_error == 0.0
    assert rep.to_dict()["layers"][0]["name"] == "2"


def test_swap_sensitivity_restores_both_models():
    f = outlier_mlp()
    q = _dynamic(f)
    before_f = [id(m) for m in f.modules()]
    before_q = [id(m) for m in q.modules()]
    x = _inputs(32)
    out_q = predict(q, x)
    swap_sensitivity(f, q, ["0", "2", "4"], x, reference=f(x).detach())
    assert [id(m) for m in f.modules()] == before_f
    assert [id(m) for m in q.modules()] == before_q
    assert all(isinstance(q[i], nnqd.Linear) for i in (0, 2, 4))
    assert torch.equal(predict(q, x), out_q)


def test_requantize_sensitivity_runs_one_quantization_per_layer_and_agrees_with_swapping():
    f = outlier_mlp()
    x = _inputs()
    ref = f(x).detach()
    seen: list[tuple[str, ...]] = []

    def quantize(keep: tuple[str, ...]) -> nn.Module:
        seen.append(keep)
        return _dynamic(f, keep)

    rep = requantize_sensitivity(quantize, ["0", "2", "4"], x, reference=ref)
    assert seen == [(), ("0",), ("2",), ("4",)]
    swapped = swap_sensitivity(f, _dynamic(f), ["0", "2", "4"], x, reference=ref)
    assert rep.ranking() == swapped.ranking()
    for a, b in zip(rep.layers, swapped.layers):
        assert a.error == pytest.approx(b.error, rel=1e-6, abs=1e-12)
    seen.clear()
    requantize_sensitivity(quantize, ["0", "2", "4"], x, reference=ref, method="quantize_one")
    assert seen == [("2", "4"), ("0", "4"), ("0", "2")]


def test_static_handler_sensitivity_finds_the_outlier_layer_of_an_fx_int8_model():
    f = outlier_mlp()
    spec = ModelSpec(name="outlier", version=1, build=outlier_mlp, data=lambda: data, metric="top1_agreement",
                     make_input=lambda b: _inputs(b, 7))
    data = TaskData(eval_inputs=_inputs(256, 2), eval_labels=None, calib_inputs=_inputs(128, 3))
    ctx = StepContext(spec=spec, data=data, engine="fbgemm")
    cfg = StaticQuantConfig(per_channel=False, calibration_batches=2)
    with quantized_engine("fbgemm"):
        out = apply_step(f, cfg, ctx)
        x = _inputs(64, 4)
        rep = handler_for(cfg).sensitivity(f, out, cfg, ctx, inputs=x, reference=f(x).detach(),
                                           method="leave_one_float", batch_size=64)
    assert sorted(rep.ranking()) == sorted(out.meta["quantized_modules"]) == ["0", "2", "4"]
    assert rep.ranking()[0] == "2"
    assert rep.baseline_error > 0.1


def test_unknown_method_and_unknown_candidate_are_user_errors():
    f = outlier_mlp()
    q = _dynamic(f)
    x = _inputs(8)
    with pytest.raises(UserInputError, match="sensitivity method 'guess' is unknown"):
        swap_sensitivity(f, q, ["0"], x, reference=f(x).detach(), method="guess")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="not in the quantized model: 9"):
        swap_sensitivity(f, q, ["9"], x, reference=f(x).detach())


def test_sensitivity_does_not_modify_the_float_model_weights():
    f = outlier_mlp()
    sd = copy.deepcopy(f.state_dict())
    x = _inputs(16)
    swap_sensitivity(f, _dynamic(f), ["0", "2", "4"], x, reference=f(x).detach(), method="quantize_one")
    assert all(torch.equal(sd[k], v) for k, v in f.state_dict().items())
