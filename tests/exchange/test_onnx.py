"""ONNX out and in: onnxruntime computes the torch model's logits; the converter gives back a certifiable model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx", reason="onnx is pinned in requirements/base.txt (make setup installs it)")
pytest.importorskip("onnxruntime", reason="onnxruntime is pinned in requirements/base.txt")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from harness.bounds.ibp import flatten_layers  # noqa: E402
from harness.data import load_split  # noqa: E402
from harness.exchange.onnx_io import OnnxRunner, UnsupportedONNXError, export_onnx, load_onnx, onnx_to_torch  # noqa: E402
from harness.models import SUPPORTED_LAYERS, cnn_small, mlp  # noqa: E402


def _randomised(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics (fresh ones are the identity and would hide a wrong conversion)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", [mlp, cnn_small])
def test_onnxruntime_and_the_converted_model_compute_the_torch_logits_on_test_images(tmp_path, arch):
    torch.manual_seed(0)
    model = _randomised(arch((1, 28, 28), 10, [0.1307], [0.3081]))
    export_onnx(model, (1, 28, 28), tmp_path / "m.onnx")
    x = load_split("mnist", "test")[0][:64]
    with torch.no_grad():
        want = model(x).numpy()
    got = OnnxRunner(tmp_path / "m.onnx")(x.numpy())
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    back, in_shape = onnx_to_torch(load_onnx(tmp_path / "m.onnx"))
    assert in_shape == (1, 28, 28)
    assert all(type(m) in SUPPORTED_LAYERS for m in flatten_layers(back))  # every certifier can read it
    # The same parameters, not folded: the same float32 computation, bit for bit
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def _graph(nodes, inits, in_shape=(1, 4), out_shape=(1, 2)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_matmul_add_becomes_one_linear_and_an_unsupported_op_is_named():
    w = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
    b = np.array([0.5, -1], dtype=np.float32)
    proto = _graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["r"]),
                    helper.make_node("Relu", ["r"], ["y"])], {"w": w, "b": b})
    model, in_shape = onnx_to_torch(proto)
    x = torch.rand(3, 4)
    assert in_shape == (4,) and [type(m) for m in model] == [nn.Linear, nn.ReLU]
    assert torch.allclose(model(x), torch.relu(x @ torch.from_numpy(w) + torch.from_numpy(b)))
    assert np.allclose(OnnxRunner(proto)(x.numpy()), model(x).numpy(), atol=1e-6)

    bad = _graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                  helper.make_node("Sigmoid", ["h"], ["y"], name="squash")], {"w": w})
    with pytest.raises(UnsupportedONNXError, match="node 'squash' \\(op Sigmoid\\): operator not supported"):
        onnx_to_torch(bad, "bad.onnx")
    branch = _graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Add", ["a", "x"], ["y"])], {},
                    out_shape=(1, 4))
    with pytest.raises(UnsupportedONNXError, match="must be a chain"):
        onnx_to_torch(branch)
