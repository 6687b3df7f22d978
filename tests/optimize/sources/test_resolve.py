"""From a job's model to a float model (``sources.resolve``): the steps a source refuses before anything runs."""

from __future__ import annotations

import pytest

from modelpress.errors import UserInputError
from modelpress.optimize.sources import parse_model_ref
from modelpress.optimize.sources.resolve import refuse_unsupported_steps


def test_training_steps_are_refused_on_the_worker_unless_the_ref_has_a_train_file():
    ref = parse_model_ref("hf:m", data={"eval": "e.jsonl"})
    with pytest.raises(UserInputError, match=r"model hf:m: step 'distill_float' trains the model.*data: \{train"):
        refuse_unsupported_steps(ref, ["quantize_dynamic", "distill_float"])
    refuse_unsupported_steps(ref.with_paths(data={"eval": "e.jsonl", "train": "t.jsonl"}),
                             ["finetune", "qat", "distill", "distill_float"])
    graph = parse_model_ref("export:m.pt2", data={"eval": "e.npz", "train": "t.npz"})
    with pytest.raises(UserInputError, match="prune_structured"):  # a train file lifts training refusals only
        refuse_unsupported_steps(graph, ["prune_structured"])
