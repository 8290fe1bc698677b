"""A ReLU network as a mixed-integer linear program: the encoding half of complete verification.

:class:`MILPNetwork` is built once per model (eval mode): the network is cut at its ReLUs and
each piece between two ReLUs (any run of Normalize, Conv2d, BatchNorm, AvgPool2d, Flatten,
Linear) is one affine map ``v -> A v + b``, stored as a float64 ``scipy.sparse`` matrix. The maps
are found by probing each piece with basis vectors on a float64 copy of its layers (``A[:, i] =
f(e_i) - f(0)``, ``b = f(0)``), which needs no rule per layer type. Every float32 parameter is
exact in float64; the probe adds one float64 rounding per entry (~1e-16 relative), far inside
the band the verdicts use. An output that does not depend on an input gets exactly 0 (both
evaluations run the same operations on the same numbers), so convolutions stay sparse.

:func:`build_program` turns the network, an input box and pre-activation bounds [l, u] of every
ReLU into the standard big-M program (Tjeng et al. 2019) for one sample. Per ReLU neuron with
input z and output h:

- u <= 0 (stable inactive): h = 0, no variable;
- l >= 0 (stable active): h = z, one variable and one equality row;
- otherwise: z in [l, u], h in [0, u], a binary d, and rows h >= z, h <= z - l (1 - d), h <= u d.

When l <= z <= u holds for every z reachable from the box, the program's feasible inputs are
exactly the box and every feasible (x, h) has h = relu(z) (d = 1 forces h = z >= 0, d = 0 forces
h = 0 >= z), so its minimum is the exact minimum of the network's margin, not a relaxation.
The bounds passed in must therefore contain every reachable pre-activation: see
:func:`harness.bounds.complete.verify_sample`, which widens float32 bounds by the rounding band
of the floating-point rule before they get here.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from harness.bounds.ibp import flatten_layers

__all__ = ["AffineMap", "MILPNetwork", "MILPProgram", "build_program", "intersect_relu_bounds"]

#: Basis vectors are probed in chunks of at most this many float64 activations (memory: 8 bytes each).
PROBE_ELEMENTS = 2 ** 22


@dataclass(frozen=True)
class AffineMap:
    """``v -> matrix @ v + bias`` on flattened tensors: in_shape -> out_shape (shapes without batch)."""

    matrix: sp.csr_matrix
    bias: np.ndarray
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _probe(layers: list[nn.Module], in_shape: tuple[int, ...]) -> AffineMap:
    """The affine map computed by ``layers`` (no ReLU among them), probed with basis vectors in float64."""
    block = copy.deepcopy(nn.Sequential(*layers)).double().eval()
    n = math.prod(in_shape)
    with torch.no_grad():
        zero = torch.zeros((1,) + in_shape, dtype=torch.float64)
        out0 = block(zero)
        out_shape = tuple(out0.shape[1:])
        bias = out0.reshape(-1)
        widest = max(n, bias.numel(), *(_widest(block, zero)))
        step = max(1, PROBE_ELEMENTS // widest)
        rows, cols, vals = [], [], []
        for start in range(0, n, step):
            k = min(step, n - start)
            basis = torch.zeros(k, n, dtype=torch.float64)
            basis[torch.arange(k), torch.arange(start, start + k)] = 1.0
            diff = (block(basis.view((k,) + in_shape)).reshape(k, -1) - bias).numpy()
            i, o = np.nonzero(diff)
            rows.append(o)
            cols.append(i + start)
            vals.append(diff[i, o])
    matrix = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(bias.numel(), n))
    return AffineMap(matrix, bias.numpy().copy(), tuple(in_shape), out_shape)


def _widest(block: nn.Sequential, x: torch.Tensor) -> list[int]:
    """Number of elements per sample of every intermediate tensor of ``block`` (for chunk sizing)."""
    sizes = []
    for layer in block:
        x = layer(x)
        sizes.append(x[0].numel())
    return sizes


@dataclass
class MILPNetwork:
    """The network as affine maps between ReLUs, built once per model and reused for every sample.

    ``hidden[k]`` maps the output of ReLU k-1 (the input for k = 0) to the input of ReLU k;
    ``final`` maps the last ReLU's output (the input if there is none) to the logits.
    ``build_s`` is the wall time the probing took.
    """

    in_shape: tuple[int, ...]
    hidden: list[AffineMap]
    final: AffineMap
    build_s: float
    model64: nn.Module = field(repr=False)
    _snapshot: dict[str, torch.Tensor] = field(repr=False)

    @classmethod
    def from_model(cls, model: nn.Module, in_shape: tuple[int, ...]) -> "MILPNetwork":
        """Encode ``model`` (an eval-mode ``nn.Sequential`` of the supported layers) for inputs of ``in_shape``.

        Raises :class:`harness.bounds.ibp.UnsupportedLayerError` naming an unsupported layer, and
        ValueError for a model in training mode or a bad shape.
        """
        in_shape = tuple(in_shape)
        if not in_shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in in_shape):
            raise ValueError(f"in_shape must be a tuple of positive ints without the batch dimension "
                             f"(e.g. (1, 28, 28)), got {in_shape!r}")
        training = sorted({type(m).__name__ for m in model.modules() if m.training})
        if training:
            raise ValueError(f"complete verification needs the model in eval mode (BatchNorm uses running "
                             f"statistics); call model.eval() first (in training mode: {', '.join(training)})")
        layers = flatten_layers(model)  # raises UnsupportedLayerError naming the layer
        start = time.perf_counter()
        pieces: list[list[nn.Module]] = [[]]
        for layer in layers:
            if type(layer) is nn.ReLU:
                pieces.append([])
            else:
                pieces[-1].append(layer)
        maps, shape = [], in_shape
        for piece in pieces:
            try:
                amap = _probe(piece, shape)
            except RuntimeError as err:  # a shape mismatch inside the model
                raise ValueError(f"the model does not accept inputs of shape {in_shape}: {err}") from err
            maps.append(amap)
            shape = amap.out_shape
        if len(maps[-1].out_shape) != 1:
            raise ValueError(f"the model must output logits of shape (classes,) per sample, got {maps[-1].out_shape}")
        model64 = copy.deepcopy(model).double().eval()
        snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(in_shape, maps[:-1], maps[-1], time.perf_counter() - start, model64, snapshot)

    @property
    def num_classes(self) -> int:
        """Number of logits."""
        return self.final.out_shape[0]

    @property
    def relu_shapes(self) -> list[tuple[int, ...]]:
        """Shape (without batch) of the input of every ReLU, in forward order."""
        return [m.out_shape for m in self.hidden]

    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError unless ``model`` has exactly the parameters and statistics this encoding was built from."""
        state = model.state_dict()
        same = state.keys() == self._snapshot.keys() and all(
            state[k].shape == v.shape and torch.equal(state[k].detach().cpu(), v.cpu()) for k, v in self._snapshot.items())
        if not same:
            raise ValueError("the model differs from the one this MILPNetwork was built from (trained or "
                             "changed since?); rebuild it with MILPNetwork.from_model(model, in_shape)")


def intersect_relu_bounds(*sources: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Elementwise intersection (max of lowers, min of uppers) of several sources of ReLU-input bounds.

    Each source is a list of (lower, upper) per ReLU in forward order, like ``ibp_bounds(...).preact``.
    Sound sources intersect to a sound, tighter set; the rounding band is applied afterwards, once.
    """
    if not sources:
        raise ValueError("intersect_relu_bounds needs at least one source of bounds")
    n = len(sources[0])
    if any(len(s) != n for s in sources):
        raise ValueError(f"every source must bound the same ReLUs; got {[len(s) for s in sources]} layers")
    out = []
    for layer in zip(*sources):
        lo = layer[0][0].detach().double()
        hi = layer[0][1].detach().double()
        for l_k, u_k in layer[1:]:
            if l_k.shape != lo.shape or u_k.shape != hi.shape:
                raise ValueError(f"bounds of one ReLU layer disagree in shape: {tuple(lo.shape)} vs {tuple(l_k.shape)}")
            lo = torch.maximum(lo, l_k.detach().double().to(lo.device))
            hi = torch.minimum(hi, u_k.detach().double().to(hi.device))
        out.append((lo, hi))
    return out


@dataclass
class MILPProgram:
    """One sample's program in HiGHS's column-wise form, before an objective is chosen.

    Columns: the input (``n_inputs`` first), then per ReLU layer its live outputs h (and, for
    unstable neurons, z and the binary d). ``out_cols[k]`` is, per neuron of layer k, the column of
    h or -1 for a neuron fixed at 0. ``counts[k]`` = (stable inactive, stable active, unstable).
    """

    matrix: sp.csc_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray
    n_inputs: int
    out_cols: list[np.ndarray]
    row_layer: np.ndarray      # per row: the ReLU layer whose neuron it defines (for sensitivity bounds)
    row_neuron: np.ndarray     # per row: that neuron's index in its layer
    counts: list[tuple[int, int, int]]

    @property
    def num_binaries(self) -> int:
        """Number of unstable ReLUs (binary variables)."""
        return int(self.integer.sum())

    def margin_objective(self, net: MILPNetwork, y: int, j: int) -> tuple[np.ndarray, float]:
        """(cost per column, constant) of z_y - z_j: the last affine map folded with the row e_y - e_j."""
        final = net.final
        row = final.matrix.getrow(y) - final.matrix.getrow(j)
        coef = np.asarray(row.todense()).ravel()
        const = float(final.bias[y] - final.bias[j])
        cost = np.zeros(self.matrix.shape[1])
        cols = self.out_cols[-1] if self.out_cols else np.arange(self.n_inputs)
        live = cols >= 0
        np.add.at(cost, cols[live], coef[live])
        return cost, const

    def highs_lp(self, cost: np.ndarray | None = None, const: float = 0.0, relax: bool = False) -> highspy.HighsLp:
        """The program as a HiGHS model minimising ``cost`` + ``const`` (no cost: a feasibility LP);
        ``relax``: without integrality, the LP relaxation."""
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.matrix.shape[1], self.matrix.shape[0]
        lp.col_cost_ = np.zeros(self.matrix.shape[1]) if cost is None else cost
        lp.offset_ = const
        lp.col_lower_, lp.col_upper_ = self.col_lower, self.col_upper
        lp.row_lower_, lp.row_upper_ = self.row_lower, self.row_upper
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = self.matrix.indptr
        lp.a_matrix_.index_ = self.matrix.indices
        lp.a_matrix_.value_ = self.matrix.data
        if self.num_binaries and not relax:
            lp.integrality_ = [highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous
                               for b in self.integer]
        return lp


def build_program(net: MILPNetwork, lo: np.ndarray, hi: np.ndarray,
                  bounds: list[tuple[np.ndarray, np.ndarray]]) -> MILPProgram:
    """The big-M program of ``net`` over the input box [lo, hi] (flattened float64 arrays).

    ``bounds`` are float64 (lower, upper) arrays per ReLU (flattened), which must contain every
    pre-activation reachable from the box (the encoding is exact only then; see the module docstring).
    """
    n0 = lo.size
    col_lo: list[np.ndarray] = [lo]
    col_hi: list[np.ndarray] = [hi]
    integer: list[np.ndarray] = [np.zeros(n0, dtype=bool)]
    trip_r: list[np.ndarray] = []
    trip_c: list[np.ndarray] = []
    trip_v: list[np.ndarray] = []
    row_lo: list[np.ndarray] = []
    row_hi: list[np.ndarray] = []
    row_layer: list[np.ndarray] = []
    row_neuron: list[np.ndarray] = []
    prev_cols = np.arange(n0)  # column of each component of the previous layer's output, -1 if fixed at 0
    n_cols, n_rows = n0, 0
    out_cols, counts = [], []

    def add_rows(r, c, v, rl, rh, layer, neuron):
        nonlocal n_rows
        trip_r.append(r + n_rows)
        trip_c.append(c)
        trip_v.append(v)
        row_lo.append(rl)
        row_hi.append(rh)
        row_layer.append(np.full(rl.size, layer))
        row_neuron.append(neuron)
        n_rows += rl.size

    for k, (amap, (l, u)) in enumerate(zip(net.hidden, bounds)):
        inactive = u <= 0
        active = (l >= 0) & ~inactive
        unstable = ~inactive & ~active
        ia, iu = np.flatnonzero(active), np.flatnonzero(unstable)
        na, nu = ia.size, iu.size
        # Columns of this layer: h for active, then z, h, d for unstable.
        h_act = n_cols + np.arange(na)
        z_uns = n_cols + na + np.arange(nu)
        h_uns = z_uns + nu
        d_uns = h_uns + nu
        n_cols += na + 3 * nu
        col_lo += [np.maximum(l[ia], 0.0), l[iu], np.zeros(nu), np.zeros(nu)]
        col_hi += [u[ia], u[iu], u[iu], np.ones(nu)]
        integer += [np.zeros(na + 2 * nu, dtype=bool), np.ones(nu, dtype=bool)]

        # Equality rows  v - A[i, live] h_prev = b[i], with v = h (active) or z (unstable).
        live = prev_cols >= 0
        sub = amap.matrix[:, np.flatnonzero(live)].tocsr()
        live_cols = prev_cols[live]
        for idx, var_cols in ((ia, h_act), (iu, z_uns)):
            block = sub[idx].tocoo()
            r = np.concatenate([block.row, np.arange(idx.size)])
            c = np.concatenate([live_cols[block.col], var_cols])
            v = np.concatenate([-block.data, np.ones(idx.size)])
            add_rows(r, c, v, amap.bias[idx], amap.bias[idx], k, idx)
        # Big-M rows of the unstable neurons.
        ar = np.arange(nu)
        ones = np.ones(nu)
        # h - z >= 0
        add_rows(np.r_[ar, ar], np.r_[h_uns, z_uns], np.r_[ones, -ones], np.zeros(nu), np.full(nu, np.inf), k, iu)
        # h - z - l d <= -l
        add_rows(np.r_[ar, ar, ar], np.r_[h_uns, z_uns, d_uns], np.r_[ones, -ones, -l[iu]],
                 np.full(nu, -np.inf), -l[iu], k, iu)
        # h - u d <= 0
        add_rows(np.r_[ar, ar], np.r_[h_uns, d_uns], np.r_[ones, -u[iu]], np.full(nu, -np.inf), np.zeros(nu), k, iu)

        cols = np.full(u.size, -1)
        cols[ia], cols[iu] = h_act, h_uns
        out_cols.append(cols)
        counts.append((int(inactive.sum()), na, nu))
        prev_cols = cols

    matrix = sp.csc_matrix((np.concatenate(trip_v) if trip_v else np.zeros(0),
                            (np.concatenate(trip_r) if trip_r else np.zeros(0, int),
                             np.concatenate(trip_c) if trip_c else np.zeros(0, int))),
                           shape=(n_rows, n_cols))
    cat = (lambda parts, dtype=float: np.concatenate(parts) if parts else np.zeros(0, dtype))
    return MILPProgram(matrix, cat(row_lo), cat(row_hi), cat(col_lo), cat(col_hi), cat(integer, bool), n0,
                       out_cols, cat(row_layer, int), cat(row_neuron, int), counts)
