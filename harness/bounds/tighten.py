"""Tighter ReLU-input bounds by linear programming, for the complete verifier's hard samples.

The big-M program of :mod:`harness.bounds.milp` is exact whatever the bounds, but its LP relaxation, and so
HiGHS's branch and bound, is only as tight as they are. On Wong & Kolter's MNIST model a few samples that
CROWN's bounds leave with ~150 unstable ReLUs do not finish within minutes; MIPVerify (Tjeng et al. 2019)
tightens every neuron's bounds by LP before its MILP. :func:`lp_tightened_bounds` does the same, layer by
layer: for every unstable neuron of layer k it minimises and maximises the neuron's input over the LP
relaxation (binaries relaxed to [0, 1]) of the layers before k, with the bounds tightened so far.

Soundness with a floating-point LP solver
-----------------------------------------
An LP optimum reported by HiGHS may be off by its tolerances, so it is never used as a bound. Each bound
is instead the value of the Lagrangian dual at the row duals HiGHS returns, evaluated in float64 (weak
duality: for *any* multipliers y, ``min c^T v >= sum_i min(y_i rl_i, y_i ru_i) + sum_j min(r_j l_j,
r_j u_j)`` with ``r = c - A^T y``, over the box [l, u] of the columns and the row bounds [rl, ru]; a
multiplier facing an infinite row bound is set to 0). This holds whatever y is, so the solver's
accuracy only affects the tightness. The float64 evaluation's own rounding (sums of at most ~10^4
terms; the reduced costs r carry the rounding of sums of |A_ij y_i|) is covered by moving each bound
outward by ``1e-9 * (sum of |terms| + sum_j (|A|^T |y| + |c|)_j max(|l_j|, |u_j|) + 1)``. A tightened bound
never replaces a tighter input bound (they are intersected), and the program's input is the real box
rounded outward, its layers the same float64 maps as the MILP's. The bounds given must already contain
every reachable pre-activation (the caller widens float32 bounds by the rounding band first), as for
the MILP itself.
"""

from __future__ import annotations

import time

import highspy
import numpy as np
import scipy.sparse as sp
import torch

from harness.bounds import fp_tolerance, rounding_scale
from harness.bounds.complete import CompleteResult, verify_sample
from harness.bounds.milp import MILPNetwork, build_program
from harness.threat_model import outward_box64

__all__ = ["flat_bounds", "lp_tightened_bounds", "safe_dual_bound", "tightened_for_milp", "verify_with_lp_bounds"]


def safe_dual_bound(cost: np.ndarray, matrix: sp.csc_matrix, row_lower: np.ndarray, row_upper: np.ndarray,
                    col_lower: np.ndarray, col_upper: np.ndarray, row_dual: np.ndarray) -> float:
    """A lower bound of ``min cost^T v`` over {row_lower <= A v <= row_upper, col_lower <= v <= col_upper}
    valid for any ``row_dual`` (weak duality), evaluated in float64 and moved down by its rounding."""
    best = -np.inf
    for y in (row_dual, -row_dual):  # whichever sign convention the solver uses, both are valid
        y = np.where((y > 0) & np.isinf(row_lower), 0.0, y)
        y = np.where((y < 0) & np.isinf(row_upper), 0.0, y)
        rows = np.where(y > 0, y * np.where(np.isinf(row_lower), 0.0, row_lower),
                        y * np.where(np.isinf(row_upper), 0.0, row_upper))
        r = cost - matrix.T @ y
        cols = np.minimum(r * col_lower, r * col_upper)
        terms = np.concatenate([rows, cols])
        # rounding of r (a cancelling sum) scales with |A|^T |y| rather than |r|: bounded through it
        spread = (abs(matrix).T @ np.abs(y) + np.abs(cost)) * np.maximum(np.abs(col_lower), np.abs(col_upper))
        value = float(terms.sum()) - 1e-9 * (float(np.abs(terms).sum()) + float(spread.sum()) + 1.0)
        best = max(best, value)
    return best


def _highs(program, threads: int) -> highspy.Highs:
    h = highspy.Highs()
    for name, value in (("output_flag", False), ("threads", threads), ("random_seed", 0),
                        ("solver", "simplex")):
        h.setOptionValue(name, value)
    h.passModel(program.highs_lp(relax=True))  # no integrality: the LP relaxation
    return h


def lp_tightened_bounds(net: MILPNetwork, lo: np.ndarray, hi: np.ndarray,
                        bounds: list[tuple[np.ndarray, np.ndarray]], *, threads: int = 1,
                        time_limit_s: float = 600.0) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """(the bounds of every ReLU layer tightened by LP, statistics).

    ``lo``, ``hi``: the input box (flat float64, rounded outward); ``bounds``: float64 (lower, upper) per
    ReLU layer, flat, containing every reachable pre-activation. Layer 0 is kept (the first affine map's
    interval bounds over a box are already its exact range); each later layer's unstable neurons are
    bounded by LP over the layers before it. Past ``time_limit_s`` the remaining neurons keep their bounds.
    """
    start = time.perf_counter()
    out = [(l.copy(), u.copy()) for l, u in bounds]
    stats = {"lps": 0, "tightened_stable": 0, "unstable_before": 0, "unstable_after": 0, "time_s": 0.0}
    for k in range(1, len(out)):
        l_k, u_k = out[k]
        unstable = np.flatnonzero((l_k < 0) & (u_k > 0))
        stats["unstable_before"] += unstable.size
        if not unstable.size:
            continue
        program = build_program(net, lo, hi, out[:k])
        h = _highs(program, threads)
        amap = net.hidden[k]
        prev = program.out_cols[-1]
        live = np.flatnonzero(prev >= 0)
        sub = amap.matrix[:, live].tocsr()
        n_cols = program.matrix.shape[1]
        all_cols = np.arange(n_cols, dtype=np.int32)
        for i in unstable:
            if time.perf_counter() - start > time_limit_s:
                break
            row = sub.getrow(i)
            cost = np.zeros(n_cols)
            cost[prev[live[row.indices]]] = row.data
            for sense in (1.0, -1.0):  # minimise z, then minimise -z
                c = sense * cost
                h.changeColsCost(n_cols, all_cols, c)
                h.run()
                stats["lps"] += 1
                duals = np.asarray(h.getSolution().row_dual, dtype=np.float64)
                if duals.size != program.matrix.shape[0] or not np.isfinite(duals).all():
                    continue
                bound = safe_dual_bound(c, program.matrix, program.row_lower, program.row_upper,
                                        program.col_lower, program.col_upper, duals) + sense * amap.bias[i]
                if sense > 0:
                    l_k[i] = max(l_k[i], bound)
                else:
                    u_k[i] = min(u_k[i], -bound)
            if l_k[i] >= 0 or u_k[i] <= 0:
                stats["tightened_stable"] += 1
        stats["unstable_after"] += int(((l_k < 0) & (u_k > 0)).sum())
    stats["time_s"] = time.perf_counter() - start
    return out, stats


def flat_bounds(relu_bounds) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per ReLU layer, its (lower, upper) bounds (tensors or arrays, any shape) as flat float64 arrays."""
    return [(torch.as_tensor(l).detach().double().cpu().reshape(-1).numpy(),
             torch.as_tensor(u).detach().double().cpu().reshape(-1).numpy()) for l, u in relu_bounds]


def tightened_for_milp(net: MILPNetwork, lo: np.ndarray, hi: np.ndarray, flat: list[tuple[np.ndarray, np.ndarray]],
                       band: float, *, threads: int = 1,
                       time_limit_s: float = 600.0) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """(bounds for a MILP that widens what it gets by ``band``, a line of the tightening's statistics).

    ``flat`` (:func:`flat_bounds`) is widened by ``band`` so that it contains every reachable
    pre-activation, and tightened by :func:`lp_tightened_bounds` over the box [lo, hi]. Each neuron gets
    the caller's bound where LP did not improve on the widened one (widened twice, a neuron near 0 would
    turn unstable) and LP's rigorous bound where it did (widened once more by the MILP, which only
    loosens it); shaped like the network's ReLU layers.
    """
    widened = [(l - band, u + band) for l, u in flat]
    tightened, stats = lp_tightened_bounds(net, lo, hi, widened, threads=threads, time_limit_s=time_limit_s)
    shaped = []
    for (l0, u0), (lw, uw), (lt, ut), s in zip(flat, widened, tightened, net.relu_shapes):
        shaped.append((torch.from_numpy(np.where(lt > lw, lt, l0)).view(s),
                       torch.from_numpy(np.where(ut < uw, ut, u0)).view(s)))
    line = (f"LP-tightened bounds ({stats['lps']} LPs, unstable {stats['unstable_before']} -> "
            f"{stats['unstable_after']} in layers 2+, {stats['time_s']:.1f}s)")
    return shaped, line


def verify_with_lp_bounds(net: MILPNetwork, model, x, y: int, eps: float, relu_bounds, *, margin_lower=None,
                          node_limit: int = 10_000, time_limit_s: float = 300.0, threads: int = 1) -> CompleteResult:
    """:func:`harness.bounds.complete.verify_sample` on bounds tightened by :func:`lp_tightened_bounds` first.

    ``relu_bounds`` (float32 or float64 tensors per ReLU, as verify_sample takes them) are widened by the
    sample's rounding band exactly as verify_sample widens them and tightened by LP
    (:func:`tightened_for_milp`). ``time_limit_s`` covers both. Returns verify_sample's result with
    ``reason`` prefixed by the tightening's statistics.
    """
    start = time.perf_counter()
    x = x.reshape((1,) + tuple(net.in_shape))
    yb = torch.tensor([int(y)])
    flat = flat_bounds(relu_bounds)
    ml = None if margin_lower is None else margin_lower.detach().reshape(1, -1)
    scale = float(rounding_scale(model, x, yb, eps, ml)[0])
    scale = max([scale] + [float(np.abs(b[np.isfinite(b)]).max(initial=0.0)) for pair in flat for b in pair])
    band = float(fp_tolerance(torch.tensor(scale, dtype=torch.float64), torch.float32))
    lo, hi = outward_box64(x[0], eps)
    shaped, line = tightened_for_milp(net, lo, hi, flat, band, threads=threads, time_limit_s=time_limit_s)
    left = max(time_limit_s - (time.perf_counter() - start), 0.0)
    r = verify_sample(net, model, x[0], int(y), eps, shaped, margin_lower=margin_lower, node_limit=node_limit,
                      time_limit_s=max(left, 1e-3), threads=threads)
    r.reason = line + (f"; {r.reason}" if r.reason else "")
    r.time_s = time.perf_counter() - start
    return r
