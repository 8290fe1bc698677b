"""Complete verification: the exact minimum of each margin z_y - z_j over B(x, eps) ∩ [0, 1] by MILP.

The last certifier of the cascade, for the samples that IBP / CROWN leave undecided and PGD does
not break. :class:`harness.bounds.milp.MILPNetwork` encodes the model once; :func:`verify_sample`
builds one sample's big-M program from pre-activation bounds and solves one program per wrong
class with HiGHS (``highspy``), stopping as soon as the sign of the margin is known.

Verdicts (per sample; "unknown" is never counted as robust or as broken)
--------------------------------------------------------------------------
- **verified**: for every wrong class not already proven by the caller's bounds, HiGHS's proven
  lower bound (its dual bound) exceeds the class's threshold ``max(band, solver_band)``:
  ``band = fp_tolerance(rounding_scale(...), float32)`` is the floating-point rule's band for the
  sample (:mod:`harness.bounds`), and ``solver_band`` accounts for HiGHS's feasibility tolerances
  (see below). The result records the band and each class's threshold. What is verified is the
  real-valued network defined by the parameters, as for every certifier of :mod:`harness.bounds`.
- **counterexample**: a solution the solver found, its input rounded to float32 and clipped to the
  largest float32 box inside the real box B(x, eps) ∩ [0, 1], is misclassified (some wrong logit
  >= the true one) by a plain forward pass of the model in float32 *and* of a float64 copy.
- **unknown**: anything else (node limit, wall-clock safety limit, a negative optimum whose input
  a forward pass does not misclassify, numerical trouble), with the reason.

Why the encoding is sound with float32 bounds
---------------------------------------------
The big-M program is exact only if every reachable pre-activation lies in the bounds it is given
(:mod:`harness.bounds.milp`). Bounds from IBP or CROWN are computed in float32 and may be off by
rounding; by the floating-point rule of :mod:`harness.bounds` that error is below ``band`` (its
residual assumption). So each bound is widened by ``band`` first (l - band, u + band): the widened
interval contains the exact real interval, hence every reachable value, and a ReLU is fixed as
stable only if it is stable after widening. Wider bounds only loosen the LP relaxation; the
integer program stays exact. The program itself is float64 with the float32 parameters exact in
it (the affine maps carry one float64 rounding, ~1e-16 relative), and its input box is the real
box rounded outward.

The solver's tolerances (``solver_band``)
-----------------------------------------
HiGHS accepts LP solutions whose rows are violated by up to the primal feasibility tolerance and
whose reduced costs have the wrong sign by up to the dual feasibility tolerance. The value of
such a solution can exceed a true lower bound (the Lagrangian bound of its duals) by at most
``tol_dual * sum_j (u_j - l_j)`` over the columns, plus ``tol_primal * sum_i |y_i|`` over the rows;
a row's multiplier y_i is the sensitivity of the objective to that row, which a backward pass of
absolute weights bounds (ReLUs are 1-Lipschitz; |A_k|^T applied from |c|; a ReLU the program fixes
inactive has a constant output and passes nothing back). ``solver_band`` is that
sum with both tolerances set to :data:`SOLVER_FEASIBILITY_TOL` (1e-9, tighter than HiGHS's default
1e-7 so that the band stays below the float32 one on the project's models). Residual assumption:
HiGHS's unscaled violations stay within its tolerances (it re-checks them after scaling) and the
multipliers of the big-M rows stay within those sensitivities.

Limits and reproducibility
--------------------------
The per-sample limit is a node budget (``node_limit``, shared by the sample's class programs);
HiGHS with one thread (``threads=1``) and a fixed seed is deterministic, and the early stops are
decisions on the solver's deterministic state, so the same model, sample and settings give the
same verdict on any machine. ``time_limit_s`` is a wall-clock safety net only: a result with it
hit (``wall_clock_limited``) depends on the machine (a class that ran out of time is unknown, and
which classes were tried after it depends on the time left). Node limits do not cap the work at
the root node (HiGHS offers no iteration limit for its MIP solver). A per-run budget is the
caller's: each result carries its time and node count.

Early stop (highspy 1.15): a ``cbMipInterrupt`` callback interrupts as soon as the dual bound
exceeds the threshold (sign proven positive); a ``cbMipImprovingSolution`` callback checks each
new incumbent whose margin is at most the threshold by forward passes and interrupts on a real
counterexample. (``objective_target`` would stop at any negative incumbent, real or not, and
``objective_bound`` applies to the dual simplex, not to the MIP's bound.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from harness.bounds import fp_tolerance, margin_lower_bounds, model_dtype, rounding_scale
from harness.bounds.milp import MILPNetwork, MILPProgram, build_program
from harness.threat_model import inner_box32, outward_box64

__all__ = ["SOLVER_FEASIBILITY_TOL", "ClassResult", "CompleteResult", "verify_box", "verify_sample"]

#: HiGHS's primal, dual and integrality tolerances for these programs (its defaults: 1e-7, 1e-7, 1e-6).
SOLVER_FEASIBILITY_TOL = 1e-9

_VERIFIED, _COUNTEREXAMPLE, _UNKNOWN = "verified", "counterexample", "unknown"


@dataclass
class ClassResult:
    """Outcome for one wrong class j: the margin z_y - z_j.

    verdict: "verified", "counterexample", "unknown", "skipped" (already proven by the caller's
    bound, not solved) or "not_run" (the sample stopped at an earlier counterexample).
    lower_bound: the solver's proven lower bound (the caller's bound for a skipped class; -inf if
    none). upper_bound: the margin of the solver's best solution in the program (+inf if none).
    threshold: the class is verified iff lower_bound > threshold. status: HiGHS's model status.
    solution: the input (float64, shaped like x) of the solver's best solution, or None.
    """

    target: int
    verdict: str
    lower_bound: float = -math.inf
    upper_bound: float = math.inf
    threshold: float = math.nan
    nodes: int = 0
    time_s: float = 0.0
    status: str = ""
    reason: str = ""
    solution: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class CompleteResult:
    """Outcome of :func:`verify_sample` for one sample.

    min_lower_bound: the smallest lower bound over the wrong classes, each the best of the
    solver's and the caller's / own IBP's (-inf if a class has none). counterexample: the input
    (shaped like x, float32) when verdict is "counterexample". time_s, nodes: the whole sample
    (encoding, bounds and every solve). band: the float32 rounding band (the bounds were widened
    by it). counts: per ReLU layer (stable inactive, stable active, unstable) after widening.
    """

    verdict: str
    min_lower_bound: float
    counterexample: torch.Tensor | None
    classes: list[ClassResult]
    time_s: float
    nodes: int
    reason: str
    band: float
    wall_clock_limited: bool
    counts: list[tuple[int, int, int]] = field(default_factory=list)


def verify_sample(net: MILPNetwork, model: nn.Module, x: torch.Tensor, y: int | torch.Tensor, eps: float,
                  relu_bounds: list[tuple[torch.Tensor, torch.Tensor]], *, margin_lower: torch.Tensor | None = None,
                  node_limit: int = 10_000, time_limit_s: float = 300.0, threads: int = 1,
                  early_stop: bool = True) -> CompleteResult:
    """Decide whether every input of B(x, eps) ∩ [0, 1] is classified y (see the module docstring).

    Args:
        net: the encoding of ``model`` (:meth:`MILPNetwork.from_model`); checked to match it.
        model: the classifier in eval mode (float32 normally), used for the rounding scale and
            the forward passes that confirm a counterexample.
        x: one input in [0, 1], shaped ``net.in_shape`` (or with a leading batch dimension of 1).
        y: its label.
        eps: l_inf radius (>= 0).
        relu_bounds: (lower, upper) of the input of every ReLU in forward order, shaped like
            ``ibp_bounds(...).preact`` for this sample; several sources may be combined first with
            :func:`harness.bounds.milp.intersect_relu_bounds`. They are widened by the rounding band.
        margin_lower: optional (K-1,) lower bounds of z_y - z_j (j ascending, skipping y) from
            the caller's certifiers; classes proven positive by them (beyond the band) are skipped.
            The own IBP's margin bounds are always used too.
        node_limit: branch-and-bound nodes for the whole sample (the deterministic limit).
        time_limit_s: wall-clock safety limit for the whole sample (machine-dependent if hit).
        threads: HiGHS threads; 1 is deterministic.
        early_stop: stop each solve once the margin's sign is known and the sample at its first
            counterexample. False solves every wrong class to optimality (nothing skipped): the
            exact minima, for tests and studies.

    Raises:
        ValueError: a bad argument (model changed since ``net`` was built, training mode, shapes,
            inputs outside [0, 1], bounds of the wrong shape or with lower > upper after widening).
    """
    start = time.perf_counter()
    x, y = _check_args(net, model, x, y, eps, node_limit, time_limit_s, threads)
    eps = float(eps)
    num_classes = net.num_classes
    xb, yb = x.unsqueeze(0), torch.tensor([y])
    bounds = _relu_bounds(net, relu_bounds)
    if margin_lower is not None:
        margin_lower = margin_lower.detach().reshape(-1).double().cpu()
        if margin_lower.numel() != num_classes - 1:
            raise ValueError(f"margin_lower must hold {num_classes - 1} bounds (one per wrong class), "
                             f"got {margin_lower.numel()}")
    scale = float(rounding_scale(model, xb, yb, eps, None if margin_lower is None else margin_lower.unsqueeze(0))[0])
    scale = max([scale] + [float(np.abs(b[np.isfinite(b)]).max(initial=0.0)) for pair in bounds for b in pair])
    band = float(fp_tolerance(torch.tensor(scale, dtype=torch.float64), torch.float32))
    with torch.no_grad():
        known = margin_lower_bounds(model, xb, yb, eps, "ibp")[0].double().cpu()
    if margin_lower is not None:
        known = torch.maximum(known, margin_lower)
    lo64, hi64 = outward_box64(x, eps)
    return _decide(net, model, y, bounds, band, known, lo64, hi64, inner_box32(x, eps), node_limit, time_limit_s,
                   threads, early_stop, start)


def verify_box(net: MILPNetwork, model: nn.Module, lo: np.ndarray, hi: np.ndarray, y: int,
               relu_bounds: list[tuple[torch.Tensor, torch.Tensor]], *, band: float, margin_lower: torch.Tensor,
               box32: tuple[torch.Tensor, torch.Tensor] | None, node_limit: int = 10_000,
               time_limit_s: float = 300.0, threads: int = 1, early_stop: bool = True,
               attack_margins: dict[int, float] | None = None) -> CompleteResult:
    """:func:`verify_sample` on a general input box, the floating-point band given by the caller.

    ``lo``, ``hi``: flat float64 arrays of the program's input box, which must contain the real box
    (rounded outward). ``box32``: the float32 box (inside the real one) in which a solver's solution
    is clipped and checked by forward passes to count as a counterexample (None: no float32 point).
    ``band``: the rounding band by which ``relu_bounds`` are widened and above which a margin is
    verified; the caller argues it (verify_sample uses the float32 rule of :mod:`harness.bounds`;
    :mod:`harness.verification` passes float64 bounds and the float64 rule). ``margin_lower``:
    (K-1,) known lower bounds of z_y - z_j (j ascending, skipping y; -inf for none).
    ``attack_margins``: per wrong class j, the margin z_y - z_j at some point of the box (an
    attack's best): a class whose threshold is at least that cannot be verified, so the sample is
    ``unknown`` at once ("cannot clear the float band", with the numbers) instead of solving.
    """
    start = time.perf_counter()
    y = int(y)
    training = sorted({type(m).__name__ for m in model.modules() if m.training})
    if training:
        raise ValueError(f"complete verification needs the model in eval mode (in training mode: {', '.join(training)})")
    net.check_model(model)
    if isinstance(node_limit, bool) or not isinstance(node_limit, int) or node_limit < 0 or not time_limit_s > 0:
        raise ValueError(f"node_limit must be an int >= 0 and time_limit_s > 0, got {node_limit!r}, {time_limit_s!r}")
    if not 0 <= y < net.num_classes:
        raise ValueError(f"label y must lie in [0, {net.num_classes - 1}], got {y}")
    n = math.prod(net.in_shape)
    lo, hi = np.asarray(lo, dtype=np.float64).reshape(-1), np.asarray(hi, dtype=np.float64).reshape(-1)
    if lo.size != n or hi.size != n or not np.all(lo <= hi):
        raise ValueError(f"lo and hi must be {n} values each with lo <= hi")
    known = torch.as_tensor(margin_lower).detach().reshape(-1).double().cpu()
    if known.numel() != net.num_classes - 1:
        raise ValueError(f"margin_lower must hold {net.num_classes - 1} bounds, got {known.numel()}")
    if not band >= 0:
        raise ValueError(f"band must be >= 0, got {band!r}")
    if box32 is not None:
        box32 = (box32[0].float().reshape(-1), box32[1].float().reshape(-1))
    return _decide(net, model, y, _relu_bounds(net, relu_bounds), float(band), known, lo, hi, box32, node_limit,
                   time_limit_s, threads, early_stop, start, attack_margins)


def _decide(net: MILPNetwork, model: nn.Module, y: int, bounds: list[tuple[np.ndarray, np.ndarray]], band: float,
            known: torch.Tensor, lo64: np.ndarray, hi64: np.ndarray, box32, node_limit: int, time_limit_s: float,
            threads: int, early_stop: bool, start: float,
            attack_margins: dict[int, float] | None = None) -> CompleteResult:
    """The MILP part shared by :func:`verify_sample` and :func:`verify_box`: widen, encode, solve per class."""
    num_classes = net.num_classes
    widened = []
    for k, (lo, hi) in enumerate(bounds):
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError(f"ReLU layer {k}: bounds must be finite (big-M constants); got inf or NaN")
        lo, hi = lo - band, hi + band
        if not np.all(lo <= hi):
            raise ValueError(f"ReLU layer {k}: a lower bound exceeds its upper bound even after widening by "
                             f"the rounding band {band:.3g}: a source of bounds is unsound or belongs to another sample")
        widened.append((lo, hi))

    targets = [j for j in range(num_classes) if j != y]
    known_by_class = dict(zip(targets, known.tolist()))
    program = build_program(net, lo64, hi64, widened)
    abs_maps = [abs(m.matrix) for m in net.hidden]  # for the backward pass of absolute weights

    results: dict[int, ClassResult] = {}
    order = []
    for j in targets:
        if early_stop and known_by_class[j] > band:
            results[j] = ClassResult(j, "skipped", lower_bound=known_by_class[j], threshold=band,
                                     reason="proven positive by the caller's / own IBP's bound")
        else:
            order.append(j)
    order.sort(key=lambda j: (known_by_class[j], j))  # most promising (smallest known bound) first

    counterexample, nodes_used, wall_limited = None, 0, False
    check = _CounterexampleCheck(model, net.model64, y, box32, net.in_shape)
    for j in order:
        if counterexample is not None and early_stop:
            results[j] = ClassResult(j, "not_run", reason="the sample already has a counterexample")
            continue
        threshold = max(band, _solver_band(program, abs_maps, net, y, j))
        seen = None if attack_margins is None else attack_margins.get(j)
        if seen is not None and seen <= threshold:
            # The minimum over the box is at most `seen` (up to the forward pass's rounding), so no
            # proven bound can exceed the threshold: say so now instead of spending the time limit.
            results[j] = ClassResult(j, _UNKNOWN, threshold=threshold, reason=(
                f"cannot clear the float band: a point of the box has margin {seen:.3g} <= threshold "
                f"{threshold:.3g} (rounding band {band:.3g})"))
            if early_stop:
                for rest in order[order.index(j) + 1:]:
                    results[rest] = ClassResult(rest, "not_run", reason="the sample cannot be verified (float band)")
                break
            continue
        time_left = time_limit_s - (time.perf_counter() - start)
        if time_left <= 0:  # say so: this class was never tried, it did not run out of time itself
            wall_limited = True
            results[j] = ClassResult(j, _UNKNOWN, threshold=threshold, status="Time limit reached",
                                     reason="not tried: the time limit was spent on earlier classes")
            continue
        res, cex = _solve_class(program, net, y, j, threshold, check, node_limit - nodes_used, time_left,
                                threads, early_stop)
        nodes_used += res.nodes
        wall_limited |= res.status == "Time limit reached"
        results[j] = res
        if cex is not None and counterexample is None:
            counterexample = cex  # without early_stop, the other classes are still solved to optimality

    classes = [results[j] for j in targets]
    if counterexample is not None:
        verdict, reason = _COUNTEREXAMPLE, ""
    elif all(c.verdict in (_VERIFIED, "skipped") for c in classes):
        verdict, reason = _VERIFIED, ""
    else:
        verdict = _UNKNOWN
        reason = _per_class_reason([c for c in classes if c.verdict in (_UNKNOWN, "not_run")])
    best = [max(c.lower_bound, known_by_class[c.target]) for c in classes]
    return CompleteResult(
        verdict=verdict, min_lower_bound=min(best) if best else math.inf,
        counterexample=counterexample, classes=classes, time_s=time.perf_counter() - start, nodes=nodes_used,
        reason=reason, band=band, wall_clock_limited=wall_limited, counts=program.counts)


def _per_class_reason(classes: list[ClassResult]) -> str:
    """The reason of an unknown sample, per class: classes with the same reason named together, the
    classes that were tried (their own reason) before those never tried."""
    groups: dict[str, list[int]] = {}
    for c in classes:
        groups.setdefault(c.reason, []).append(c.target)
    parts = sorted(groups.items(), key=lambda kv: (kv[0].startswith("not tried") or kv[0].startswith("the sample"),
                                                   min(kv[1])))
    return "; ".join(f"class{'es' if len(t) > 1 else ''} {', '.join(map(str, t))}: {r}" for r, t in parts)


# ----------------------------------------------------------------------------------------- checks
def _check_args(net: MILPNetwork, model: nn.Module, x: torch.Tensor, y, eps, node_limit, time_limit_s,
                threads) -> tuple[torch.Tensor, int]:
    training = sorted({type(m).__name__ for m in model.modules() if m.training})
    if training:
        raise ValueError(f"complete verification needs the model in eval mode; call model.eval() first "
                         f"(in training mode: {', '.join(training)})")
    net.check_model(model)
    x = x.detach().cpu()
    if tuple(x.shape) == (1,) + net.in_shape:
        x = x[0]
    if tuple(x.shape) != net.in_shape:
        raise ValueError(f"x must be one input of shape {net.in_shape} (or (1, *{net.in_shape})), got {tuple(x.shape)}")
    if not x.is_floating_point() or not bool(((x >= 0) & (x <= 1)).all()):
        raise ValueError("x must be a floating tensor with values in [0, 1] (pixel space; normalisation is a model layer)")
    y = int(y)
    if not 0 <= y < net.num_classes:
        raise ValueError(f"label y must lie in [0, {net.num_classes - 1}], got {y}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if isinstance(node_limit, bool) or not isinstance(node_limit, int) or node_limit < 0:
        raise ValueError(f"node_limit must be an int >= 0, got {node_limit!r}")
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be > 0, got {time_limit_s!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    return x.to(model_dtype(model)), y


def _relu_bounds(net: MILPNetwork, relu_bounds) -> list[tuple[np.ndarray, np.ndarray]]:
    """The bounds as flat float64 arrays, checked against the network's ReLU layers."""
    shapes = net.relu_shapes
    if len(relu_bounds) != len(shapes):
        raise ValueError(f"relu_bounds must hold one (lower, upper) pair per ReLU layer: the model has "
                         f"{len(shapes)}, got {len(relu_bounds)}")
    out = []
    for k, (pair, shape) in enumerate(zip(relu_bounds, shapes)):
        if len(pair) != 2:
            raise ValueError(f"relu_bounds[{k}] must be a (lower, upper) pair")
        arrays = []
        for t in pair:
            t = torch.as_tensor(t).detach()
            if tuple(t.shape) not in (shape, (1,) + shape):
                raise ValueError(f"relu_bounds[{k}] must have shape {shape} or (1, *{shape}) (this sample's "
                                 f"ReLU inputs), got {tuple(t.shape)}")
            arrays.append(t.double().cpu().reshape(-1).numpy())
        out.append((arrays[0], arrays[1]))
    return out


# ------------------------------------------------------------------------------------------ boxes


# ---------------------------------------------------------------------------- counterexample test
class _CounterexampleCheck:
    """The verdict rule for a candidate input: clip to the float32 box, forward in float32 and float64."""

    def __init__(self, model: nn.Module, model64: nn.Module, y: int, box32, in_shape: tuple[int, ...]) -> None:
        self.model, self.model64, self.y, self.box32, self.in_shape = model, model64, y, box32, in_shape
        self.dtype = model_dtype(model)

    def __call__(self, values: np.ndarray) -> torch.Tensor | None:
        """The clipped float32 input if it is a real counterexample, else None."""
        if self.box32 is None:
            return None
        lo, hi = self.box32
        cand = torch.from_numpy(np.asarray(values, dtype=np.float64)).float()
        cand = torch.minimum(torch.maximum(cand, lo), hi).view(self.in_shape)
        with torch.no_grad():
            for m, dtype in ((self.model, self.dtype), (self.model64, torch.float64)):
                z = m(cand.to(dtype).unsqueeze(0))[0]
                others = torch.cat([z[:self.y], z[self.y + 1:]])
                if not bool(others.max() >= z[self.y]):
                    return None
        return cand


# ---------------------------------------------------------------------------------- solver band
def _solver_band(program: MILPProgram, abs_maps: list[sp.csr_matrix], net: MILPNetwork, y: int, j: int) -> float:
    """tol * (sum of column ranges + sum over rows and inputs of the objective's sensitivity to them)."""
    coef = np.abs(np.asarray((net.final.matrix.getrow(y) - net.final.matrix.getrow(j)).todense()).ravel())
    per_layer = []
    s = coef
    for k in reversed(range(len(abs_maps))):  # s: sensitivity to the outputs of ReLU layer k -> to its inputs
        per_layer.append(s)
        # A ReLU fixed inactive (no column, no row: its output is the constant 0) passes no perturbation
        # back; without this mask the bound grows with every layer's full |W| (~27 on a 6x256 MNIST net).
        s = abs_maps[k].T @ (s * (program.out_cols[k] >= 0))
    per_layer.reverse()
    row_sens = 0.0
    if program.row_layer.size:
        flat = np.concatenate(per_layer)
        offsets = np.cumsum([0] + [p.size for p in per_layer[:-1]])
        row_sens = float(flat[offsets[program.row_layer] + program.row_neuron].sum())
    input_sens = float(s.sum())
    ranges = program.col_upper - program.col_lower
    return SOLVER_FEASIBILITY_TOL * (float(ranges.sum()) + row_sens + input_sens)


# ----------------------------------------------------------------------------------------- solve
_SCHEDULER_THREADS: list[int] = []  # the thread count HiGHS's process-wide scheduler was started with


def _use_threads(threads: int) -> None:
    """HiGHS starts one scheduler per process and refuses to run with another thread count: restart it.

    Also at this module's first solve, since another user of highspy may have started it already.
    """
    if _SCHEDULER_THREADS != [threads]:
        highspy.Highs.resetGlobalScheduler(True)
    _SCHEDULER_THREADS[:] = [threads]


def _solve_class(program: MILPProgram, net: MILPNetwork, y: int, j: int, threshold: float,
                 check: _CounterexampleCheck, nodes_left: int, time_left: float, threads: int,
                 early_stop: bool) -> tuple[ClassResult, torch.Tensor | None]:
    """Minimise z_y - z_j with HiGHS; stop early once its sign is known (if ``early_stop``)."""
    if nodes_left <= 0 and program.num_binaries:
        return ClassResult(j, _UNKNOWN, threshold=threshold, reason="node limit (the sample's budget is spent)"), None
    if time_left <= 0:
        return ClassResult(j, _UNKNOWN, threshold=threshold, status="Time limit reached",
                           reason="wall-clock safety limit (machine-dependent)"), None
    cost, const = program.margin_objective(net, y, j)
    h = highspy.Highs()
    for name, value in (("output_flag", False), ("threads", threads), ("random_seed", 0),
                        ("mip_max_nodes", max(nodes_left, 0)), ("time_limit", float(time_left)),
                        ("primal_feasibility_tolerance", SOLVER_FEASIBILITY_TOL),
                        ("dual_feasibility_tolerance", SOLVER_FEASIBILITY_TOL),
                        ("mip_feasibility_tolerance", SOLVER_FEASIBILITY_TOL),
                        ("mip_rel_gap", 0.0), ("mip_abs_gap", 1e-9)):
        h.setOptionValue(name, value)
    h.passModel(program.highs_lp(cost, const))

    state: dict = {"cex": None, "stop": "", "error": None}
    n_in = program.n_inputs

    def on_interrupt(e) -> None:
        if early_stop and e.data_out.mip_dual_bound > threshold:
            state["stop"] = "sign proven positive"
            e.interrupt()

    def on_solution(e) -> None:
        try:
            if state["cex"] is None and e.data_out.objective_function_value <= threshold:
                cex = check(e.data_out.mip_solution[:n_in])
                if cex is not None:
                    state["cex"] = cex
                    if early_stop:
                        state["stop"] = "counterexample"
                        e.interrupt()
        except Exception as err:  # an exception must not vanish inside the solver: stop and report it
            state["error"] = err
            e.interrupt()

    if program.num_binaries:
        h.cbMipInterrupt.subscribe(on_interrupt)
        h.cbMipImprovingSolution.subscribe(on_solution)
    _use_threads(threads)
    t0 = time.perf_counter()
    run_status = h.run()
    elapsed = time.perf_counter() - t0
    if state["error"] is not None:
        raise state["error"]
    if run_status == highspy.HighsStatus.kError:
        raise RuntimeError(f"HiGHS failed to solve the program (status {h.modelStatusToString(h.getModelStatus())})")
    status = h.modelStatusToString(h.getModelStatus())
    info = h.getInfo()
    model_status = h.getModelStatus()
    solved = model_status == highspy.HighsModelStatus.kOptimal
    if program.num_binaries:
        lower = info.mip_dual_bound
        upper = info.objective_function_value if info.primal_solution_status == 2 else math.inf
        nodes = int(info.mip_node_count)
    else:  # a pure LP: at its optimum the objective is the bound (within the solver band)
        lower = upper = info.objective_function_value if solved else -math.inf
        nodes = 0
    solution = None
    if info.primal_solution_status == 2:  # a feasible solution exists
        values = np.asarray(h.getSolution().col_value)[:n_in]
        solution = torch.from_numpy(values.copy()).view(check.in_shape)
        if state["cex"] is None and upper <= threshold:
            state["cex"] = check(values)  # the final incumbent
    if not math.isfinite(lower) and lower != -math.inf:
        lower = -math.inf
    res = ClassResult(j, _UNKNOWN, lower_bound=float(lower), upper_bound=float(upper), threshold=threshold,
                      nodes=nodes, time_s=elapsed, status=status, solution=solution)
    if state["cex"] is not None:
        res.verdict = _COUNTEREXAMPLE
    elif lower > threshold:
        res.verdict = _VERIFIED
    elif model_status == highspy.HighsModelStatus.kTimeLimit:
        res.reason = "wall-clock safety limit (machine-dependent)"
    elif solved or state["stop"]:
        res.reason = (f"the optimum {upper:.3g} is at most the threshold {threshold:.3g} but no solution the "
                      f"solver found is misclassified by a forward pass")
    elif model_status in (highspy.HighsModelStatus.kSolutionLimit, highspy.HighsModelStatus.kInterrupt):
        res.reason = f"node limit (lower bound {lower:.3g}, threshold {threshold:.3g})"
    else:
        res.reason = f"solver status: {status}"
    return res, state["cex"]
