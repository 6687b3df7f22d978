"""Built-in zoo models: the same weights and inputs on every CPU (shipped or drawn from a seed), registered only."""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modelpress.errors import UnknownModelError
from modelpress.optimize.sources.registered import materialize, resolve_model
from modelpress.zoo import models as zoo
from modelpress.zoo.models import digits_cnn_spec, mlp_spec


def test_built_in_digits_weights_do_not_depend_on_what_the_process_drew_before_or_on_the_threads():
    spec = digits_cnn_spec()
    torch.set_num_threads(1)
    first, id1 = materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=None)
    torch.rand(7)  # disturb the global RNG, as an earlier job in the same worker child would
    torch.set_num_threads(2)  # training summed differently with another thread count; loading does not
    second, id2 = materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=None)
    torch.set_num_threads(1)  # as this test always left it for the tests after it
    assert id1 == id2
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
    shipped = load_file(str(resources.files("modelpress.zoo").joinpath("data", spec.shipped_weights)))
    assert all(torch.equal(shipped[k], v) for k, v in first.state_dict().items())


def test_a_module_function_outside_the_allowlist_is_refused_without_importing_it():
    with pytest.raises(UnknownModelError, match="not allowed"):
        resolve_model("os:system", allowlist=("mycompany.models",))
    with pytest.raises(UnknownModelError, match="unknown model"):
        resolve_model("no_such_model")


def test_the_cpu_independent_log_is_within_a_few_ulps_of_the_true_one():
    # zoo._log (exact-rounded arithmetic only) stands in for libm's log, whose last bit differs by CPU.
    x = np.concatenate([np.geomspace(2.0**-104, 1.0, 20001)[:-1], 1.0 - np.geomspace(2.0**-53, 0.5, 1001),
                        [0.5, 0.7071067811865475, 0.7071067811865476, 0.75]])
    got = zoo._log(x)
    want = np.array([math.log(v) for v in x])
    assert float((np.abs(got - want) / np.spacing(np.abs(want))).max()) <= 4


def test_the_mlp_inputs_are_fixed_normal_draws_and_a_shorter_draw_is_a_prefix_of_a_longer_one():
    spec = mlp_spec()
    assert torch.equal(spec.make_input(64), spec.make_input(64)) and spec.make_input(64).dtype == torch.float32
    assert torch.equal(zoo._randn((4, 512), 7).flatten(), zoo._randn((64, 512), 7).flatten()[: 4 * 512])
    assert not torch.equal(zoo._randn((4, 512), 7), zoo._randn((4, 512), 8))
    x = spec.data().train_inputs.double().flatten()
    assert float(x.mean()) == pytest.approx(0.0, abs=0.005) and float(x.std()) == pytest.approx(1.0, abs=0.005)
    assert float((x.abs() > 1.96).double().mean()) == pytest.approx(0.05, abs=0.002)  # normal, not uniform, tails
