"""Built-in zoo models: reproducible weights, registered names only."""

from __future__ import annotations

import pytest
import torch

from modelpress.optimize.errors import UnknownModelError
from modelpress.optimize.zoo import digits_cnn_spec, materialize, resolve_model


def test_built_in_digits_weights_do_not_depend_on_what_the_process_drew_before():
    torch.set_num_threads(1)
    spec = digits_cnn_spec()
    first, id1 = materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=None)
    torch.rand(7)  # disturb the global RNG, as an earlier job in the same worker child would
    second, id2 = materialize(spec, weights=None, max_bytes=1 << 30, cache_dir=None)
    assert id1 == id2
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_module_function_outside_the_allowlist_is_refused_without_importing_it():
    with pytest.raises(UnknownModelError, match="not allowed"):
        resolve_model("os:system", allowlist=("mycompany.models",))
    with pytest.raises(UnknownModelError, match="unknown model"):
        resolve_model("no_such_model")
