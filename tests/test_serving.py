"""reranker.serving: a model's serving settings resolved once from its metadata."""

from __future__ import annotations

import json

from reranker.models import GROUPRANK_ALIAS
from reranker.serving import ServingConfig


def test_the_shipped_model_is_served_in_one_pass_with_its_calibrated_fusion() -> None:
    """Pins what the default model serves (docs/results-one-pass.md): the likelihood alone, fused with the
    retriever score and the dense similarity at the weights its calibration chose."""
    config = ServingConfig.from_model(GROUPRANK_ALIAS)
    assert config.weight == 0.4
    assert config.settings == {"group_size": 20, "max_doc_chars": 250, "decoding": "slots", "rubric": "concise",
                               "slot_feed": "fixed", "likelihood_weight": 1.0, "weight_without_likelihood": 0.2,
                               "dense_weight": 0.9}


def test_options_keep_what_the_caller_gave_and_what_the_method_takes(tmp_path) -> None:
    (tmp_path / "metadata.json").write_text(json.dumps({"fusion_weight": 0.3, "serving": {
        "group_size": 8, "decoding": "readout", "dense_weight": 0.5, "unknown": 1, "rubric": None}}))
    config = ServingConfig.from_model(str(tmp_path))
    assert (config.weight, config.settings) == (0.3, {"group_size": 8, "decoding": "readout", "dense_weight": 0.5})
    groupwise = {"weight", "group_size", "decoding", "dense_weight"}
    assert config.options(groupwise, {"group_size": 4}) == {"weight": 0.3, "group_size": 4, "decoding": "readout",
                                                             "dense_weight": 0.5}
    assert config.options({"weight", "decoding", "dense_weight"}, method="pointwise") == {"weight": 0.3,
                                                                                         "dense_weight": 0.5}
    assert ServingConfig.from_model(str(tmp_path / "none")).options({"weight"}, {"weight": 0.9}) == {"weight": 0.9}
