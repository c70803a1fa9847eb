"""One parameter layout: the model's buffer, `info` and the checkpoint check agree with it."""

import pytest

from sparselm.config import make_config
from sparselm.counting import count_from_config
from sparselm.layout import gate_names, parameter_shapes
from sparselm.model import LanguageModel
from sparselm.model_io import expected_shapes

V = 11


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(sparsity=0.3, layers=3), dict(output="factorized", hidden=9, sparsity=0.4)],
)
def test_model_info_and_checkpoint_check_share_the_layout(overrides):
    cfg = make_config("small", **(dict(emb=5, hidden=6, layers=2) | overrides))
    shapes = parameter_shapes(cfg, V)
    model = LanguageModel(cfg, V)
    assert list(model.params) == list(shapes)
    for name, shape in shapes.items():
        pattern = model.patterns.get(name)
        if pattern is None:
            assert model.params[name].shape == shape
        else:  # a CSR gate stores its (N,) values; its pattern has the dense shape
            assert tuple(pattern.shape) == shape
            assert model.params[name].shape == (pattern.nnz,)
    counted = {r["name"]: tuple(r["shape"]) for r in count_from_config(cfg, V)["matrices"]}
    assert list(counted.items()) == list(shapes.items())
    assert expected_shapes(cfg, V) == shapes


def test_layout_order_and_gate_names():
    cfg = make_config("small", emb=5, hidden=6, layers=2)
    assert list(parameter_shapes(cfg, V)) == [
        "embedding.weight",
        "lstm.0.w_x",
        "lstm.0.w_h",
        "lstm.0.bias",
        "lstm.1.w_x",
        "lstm.1.w_h",
        "lstm.1.bias",
        "softmax.weight",
        "softmax.bias",
    ]
    assert list(gate_names(2)) == ["lstm.0.w_x", "lstm.0.w_h", "lstm.1.w_x", "lstm.1.w_h"]
    assert parameter_shapes(cfg, V)["lstm.1.w_x"] == (24, 6)
