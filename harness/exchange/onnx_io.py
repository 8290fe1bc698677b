"""ONNX in and out: export a harness model, convert an ONNX network into a certifiable torch model.

Export (:func:`export_onnx`) uses torch's TorchScript-based exporter (``dynamo=False``) at opset 13:
the dynamo exporter needs ``onnxscript``, which the harness does not pin, and opset 13 is read by
every onnxruntime of the last years and by the VNN-COMP tools. The model's first layer
(:class:`harness.models.Normalize`) is exported with it, as Sub and Div, so the ONNX network takes
pixels in [0, 1] like every harness model.

Import (:func:`onnx_to_torch`) is a small converter of our own, not ``onnx2torch``: onnx2torch
builds an ``fx.GraphModule`` of its own operator modules (OnnxGemm, OnnxBinaryMathOperation, ...),
which none of the project's certifiers can bound: the own IBP and the MILP encoding accept exactly
the layer types of :data:`harness.models.SUPPORTED_LAYERS` in an ``nn.Sequential``, matched by type
(a subclass could change ``forward``). The converter produces exactly that, for networks that are
a chain (each node reads the previous node's output plus constant tensors) of

    Gemm, MatMul (+ Add of a constant: one Linear), Add, Conv, Relu, Flatten, Reshape (to a flat
    vector), BatchNormalization, Sub / Div by constants (a Normalize layer), Identity, Dropout.

The converted parameters are the ONNX tensors themselves (float32, nothing folded), so the torch
model computes the same real-valued function. Anything else raises :class:`UnsupportedONNXError`
naming the node and its operator.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from harness.models import Normalize

__all__ = ["OPSET", "UnsupportedONNXError", "export_onnx", "onnx_to_torch", "load_onnx", "OnnxRunner"]

#: The opset of exported files.
OPSET = 13


class UnsupportedONNXError(ValueError):
    """An ONNX file the converter cannot turn into a certifiable model; the message names the node."""


def export_onnx(model: nn.Module, in_shape: tuple[int, ...], path: Path | str) -> None:
    """Write ``model`` (eval mode, float32) as ONNX with a dynamic batch dimension, input named ``input``."""
    dummy = torch.zeros((1,) + tuple(in_shape), dtype=torch.float32)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # torch warns that the TorchScript exporter is legacy; it is the one that needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), buf, dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          # no folding: BatchNorm stays a BatchNormalization node instead of being folded
                          # (rounded) into the convolution, so the file holds the model's own parameters
                          do_constant_folding=False)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    Path(path).write_bytes(proto.SerializeToString())


def load_onnx(path: Path | str) -> onnx.ModelProto:
    """Read an ONNX file (a ``.gz`` one is decompressed); UnsupportedONNXError if it is not ONNX."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            import gzip  # stdlib; only the compressed benchmarks need it

            data = gzip.decompress(data)
        return onnx.load_from_string(data)
    except OSError as err:
        raise FileNotFoundError(f"{path}: {err.strerror or err}") from err
    except Exception as err:  # noqa: BLE001 - protobuf raises its own DecodeError, among others
        raise UnsupportedONNXError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})") from err


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def onnx_to_torch(proto: onnx.ModelProto, where: str = "<onnx>") -> tuple[nn.Sequential, tuple[int, ...]]:
    """(the network as an eval-mode float32 ``nn.Sequential`` of supported layers, its input shape without batch).

    Raises UnsupportedONNXError naming the first node (and operator) that is not supported.
    """
    graph = proto.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UnsupportedONNXError(f"{where}: the network must have one input and one output, got "
                                   f"{len(inputs)} and {len(graph.output)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]) or inputs[0].type.tensor_type.elem_type != 1:
        raise UnsupportedONNXError(f"{where}: the input must be float32 of shape (batch, ...) with known sizes, "
                                   f"got {dims}")
    if dims[0] not in (None, 1) and dims[0] <= 0:
        raise UnsupportedONNXError(f"{where}: bad batch dimension {dims[0]}")
    in_shape = tuple(int(d) for d in dims[1:])

    current = inputs[0].name
    layers: list[nn.Module] = []
    pending_linear: nn.Linear | None = None  # a MatMul waiting for its bias (Add)
    norm: list[np.ndarray | None] | None = None  # [mean, std] of Sub/Div being collected
    shape = in_shape  # per-sample shape of the current tensor

    def fail(node: onnx.NodeProto, why: str) -> UnsupportedONNXError:
        name = f" {node.name!r}" if node.name else ""
        return UnsupportedONNXError(f"{where}: node{name} (op {node.op_type}): {why}")

    def const(node: onnx.NodeProto, name: str) -> np.ndarray:
        if name not in consts:
            raise fail(node, f"input {name!r} must be a constant (initializer or Constant node)")
        return consts[name]

    def flush_norm() -> None:
        nonlocal norm
        if norm is not None:
            mean, std = norm
            channels = shape[0]
            mean = np.zeros(1, np.float32) if mean is None else mean
            std = np.ones(1, np.float32) if std is None else std
            layers.append(Normalize(np.broadcast_to(mean.reshape(-1), (channels,)).tolist(),
                                    np.broadcast_to(std.reshape(-1), (channels,)).tolist()))
            norm = None

    def per_channel(node: onnx.NodeProto, c: np.ndarray) -> np.ndarray:
        """A constant that is one value, or one per channel of a (C, H, W) tensor: the Normalize layer's form."""
        if len(shape) != 3:
            raise fail(node, f"Sub / Div by a constant is supported on image tensors (C, H, W) only "
                             f"(a Normalize layer), here the tensor has shape {shape}")
        flat = c.reshape(-1).astype(np.float32)
        if c.size == 1 or (c.size == shape[0] and c.shape[-2:] in ((1, 1),) and c.ndim >= 3):
            return flat
        raise fail(node, f"constant of shape {c.shape} is not one value or one per channel")

    for node in graph.node:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise fail(node, f"operator domain {node.domain!r} is not supported")
        if op == "Constant":
            value = _attrs(node).get("value")
            if value is None:
                raise fail(node, "only Constant nodes with a 'value' tensor are supported")
            consts[node.output[0]] = numpy_helper.to_array(value)
            continue
        data_inputs = [i for i in node.input if i and i not in consts]
        if op == "Identity" and not data_inputs:  # the exporter aliases equal initializers this way
            consts[node.output[0]] = consts[node.input[0]]
            continue
        if data_inputs != [current]:
            raise fail(node, "the network must be a chain: each node reads the previous node's output and "
                             "constants (branches, residual connections and second inputs are not supported)")
        a = _attrs(node)
        if op not in ("Sub", "Div"):
            flush_norm()
        if op != "Add" and pending_linear is not None:
            pending_linear = None
        if op in ("Identity", "Dropout"):
            pass
        elif op == "Sub" or op == "Div":
            if node.input[0] != current:
                raise fail(node, "the constant must be the second operand (x - c, x / c)")
            c = per_channel(node, const(node, node.input[1]))
            if norm is None:
                norm = [None, None]
            if op == "Sub":
                if norm[0] is not None or norm[1] is not None:
                    raise fail(node, "only (x - mean) / std is supported (Sub before Div, once each)")
                norm[0] = c
            else:
                if norm[1] is not None:
                    raise fail(node, "only one Div per normalisation is supported")
                norm[1] = c
        elif op == "Flatten":
            if a.get("axis", 1) != 1:
                raise fail(node, f"Flatten with axis {a.get('axis')} (only axis=1 keeps the batch)")
            layers.append(nn.Flatten())
            shape = (math.prod(shape),)
        elif op == "Reshape":
            target = const(node, node.input[1]).reshape(-1).tolist()
            n = math.prod(shape)
            if target not in ([-1, n], [1, n], [0, n], [-1], [n]) and not (len(target) == 2 and target[0] in (-1, 0, 1)
                                                                           and target[1] == -1):
                raise fail(node, f"Reshape to {target}: only a reshape to a flat (batch, {n}) vector is supported")
            layers.append(nn.Flatten())
            shape = (n,)
        elif op == "Gemm":
            if len(shape) != 1:
                raise fail(node, f"Gemm on a tensor of shape {shape} (expected a flat vector; add a Flatten)")
            if a.get("transA", 0) != 0:
                raise fail(node, "Gemm with transA=1")
            w = const(node, node.input[1]).astype(np.float32)
            w = w if a.get("transB", 0) else w.T
            w = w * np.float32(a.get("alpha", 1.0)) if a.get("alpha", 1.0) != 1.0 else w
            b = const(node, node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2] else None
            if b is not None and a.get("beta", 1.0) != 1.0:
                b = b * np.float32(a.get("beta", 1.0))
            layers.append(_linear(node, w, b, fail))
            shape = (w.shape[0],)
        elif op == "MatMul":
            if len(shape) != 1 or node.input[0] != current:
                raise fail(node, f"MatMul must be x @ W on a flat vector (got shape {shape})")
            w = const(node, node.input[1]).astype(np.float32)
            if w.ndim != 2:
                raise fail(node, f"MatMul by a constant of shape {w.shape} (expected a matrix)")
            pending_linear = _linear(node, w.T, None, fail)
            layers.append(pending_linear)
            shape = (w.shape[1],)
            current = node.output[0]
            continue  # keep pending_linear for a following Add
        elif op == "Add":
            other = [i for i in node.input if i != current]
            c = const(node, other[0]).astype(np.float32)
            if pending_linear is not None and c.size == shape[0]:
                with torch.no_grad():
                    pending_linear.bias.copy_(torch.from_numpy(c.reshape(-1).copy()))
                pending_linear = None
            elif len(shape) == 3:
                c = per_channel(node, c)
                layers.append(Normalize((-c).tolist() if c.size > 1 else [float(-c[0])] * shape[0],
                                        [1.0] * shape[0]))
            else:
                raise fail(node, "Add of a constant is supported as the bias of a MatMul or on image tensors")
        elif op == "Relu":
            layers.append(nn.ReLU())
        elif op == "Conv":
            if len(shape) != 3:
                raise fail(node, f"Conv on a tensor of shape {shape} (expected (C, H, W))")
            w = const(node, node.input[1]).astype(np.float32)
            b = const(node, node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2] else None
            if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise fail(node, "grouped or dilated convolutions are not supported")
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise fail(node, "auto_pad is not supported (give explicit pads)")
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
                raise fail(node, f"asymmetric padding {pads}")
            conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", [1, 1])),
                             padding=(pads[0], pads[1]), bias=True)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w))
                conv.bias.copy_(torch.from_numpy(b) if b is not None else torch.zeros(w.shape[0]))
            layers.append(conv)
            with torch.no_grad():
                shape = tuple(conv(torch.zeros((1,) + shape)).shape[1:])
        elif op == "BatchNormalization":
            scale, bias, mean, var = (const(node, n).astype(np.float32) for n in node.input[1:5])
            bn = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(shape[0], eps=float(a.get("epsilon", 1e-5)))
            with torch.no_grad():
                for t, v in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean), (bn.running_var, var)):
                    t.copy_(torch.from_numpy(v.copy()))
            layers.append(bn)
        else:
            raise fail(node, "operator not supported (supported: Gemm, MatMul, Add, Conv, Relu, Flatten, Reshape, "
                             "BatchNormalization, Sub, Div, Identity, Dropout, Constant)")
        current = node.output[0]
    flush_norm()
    if current != graph.output[0].name:
        raise UnsupportedONNXError(f"{where}: the graph's output {graph.output[0].name!r} is not the end of the chain")
    if len(shape) != 1:
        raise UnsupportedONNXError(f"{where}: the network must output a vector of logits per sample, got {shape}")
    model = nn.Sequential(*layers).float().eval()
    model.requires_grad_(False)
    return model, in_shape


def _linear(node, w: np.ndarray, b: np.ndarray | None, fail) -> nn.Linear:
    if w.ndim != 2:
        raise fail(node, f"weight of shape {w.shape} (expected a matrix)")
    lin = nn.Linear(w.shape[1], w.shape[0], bias=True)  # a missing bias is 0 (the own IBP needs one)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        lin.bias.copy_(torch.from_numpy(b.reshape(-1).copy()) if b is not None else torch.zeros(w.shape[0]))
    return lin


class OnnxRunner:
    """The ONNX network as onnxruntime runs it (the reference the competition checks counterexamples with)."""

    def __init__(self, path_or_proto) -> None:
        import onnxruntime  # heavy: only where a counterexample or an export is checked

        data = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else \
            load_onnx(path_or_proto).SerializeToString()
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits (B, K) for inputs x (B, *in_shape), float32; one sample at a time if the batch is fixed."""
        x = np.asarray(x, dtype=np.float32)
        fixed = self.input.shape[0] if isinstance(self.input.shape[0], int) else None
        if fixed == 1 and x.shape[0] != 1:
            return np.concatenate([self.session.run(None, {self.input.name: x[i:i + 1]})[0] for i in range(len(x))])
        return self.session.run(None, {self.input.name: x})[0].reshape(x.shape[0], -1)
