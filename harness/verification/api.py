"""Verify a classifier on an input box: does every input of [lo, hi] keep the label on top?

The question VNN-COMP's classification properties ask ("is some Y_j >= Y_label reachable from the
box?"), answered by the project's own pieces in order of cost, each stage only for what the earlier
ones left open:

    clean   the box's centre, one forward pass
    pgd     margin-loss PGD (:func:`harness.attacks.pgd.pgd_attack`)
    ibp     the own IBP (:func:`harness.bounds.ibp.ibp_bounds`), float64
    crown   auto_LiRPA's CROWN (:mod:`harness.bounds.lirpa`), float64, intersected with IBP
    alpha-crown auto_LiRPA's alpha-CROWN, float64; its intermediate bounds cut unstable ReLUs
    autoattack  AutoAttack standard (:func:`harness.attacks.autoattack.autoattack`): after the
            bounds because it costs ~10 s per robust instance on one core, more than alpha-CROWN
    lp      the unstable ReLU inputs of the second and later layers bounded by LP over the layers
            before them (:func:`harness.bounds.tighten.lp_tightened_bounds`, each bound a float64
            Lagrangian dual bound, sound whatever the solver's tolerances), within a share of the
            time left: fewer unstable ReLUs and smaller big-M constants for the MILP
    milp    the complete MILP of :mod:`harness.bounds.complete` (:func:`verify_box`) on the
            intersected intermediate bounds, with the attacks' best margins for the band check

Any VNN-LIB property of linear output constraints (a disjunction of conjunctions) reduces to this
question exactly, by a head of linear and ReLU layers appended to the network
(:mod:`harness.verification.properties`).

Results: ``sat`` (a counterexample: a float32 point of the box that a float32 *and* a float64
forward pass of the model put some other class at or above the label), ``unsat`` (proven), ``unknown``
(with the reason per class) or ``timeout`` (the instance's time limit was spent). "unknown" and
"timeout" are never counted as verified.

The attacks run on any box, not only an l_inf ball: they attack ``u -> model(lo + (hi - lo) * u)``
over u in [0, 1]^n (the ball of radius 1/2 around 1/2, which is what they take), and every point
they report is mapped back, clipped into the float32 box and checked by forward passes here.

Floating-point soundness of "unsat"
-----------------------------------
Every bound here is computed on a float64 copy of the model (each float32 parameter is exact in
float64) over the box rounded outward in float64, so it bounds the real-valued network over a box
containing the real one. The verdict rule is the project's float64 rule (:mod:`harness.bounds`):
a margin counts as proven only above ``FP64_ABS_TOL + FP64_REL_TOL * scale`` (1e-12 + 1e-9 * scale),
and the MILP widens its intermediate bounds by that band and requires each class's optimum above
``max(band, solver band)``. ``scale`` is the envelope of every magnitude the computations pass
through: the clean logits, the margin bounds, and the own IBP's and CROWN's bounds of every ReLU
input. In float64 the accumulated rounding error of these sums (~1e-16 relative per operation,
~1e-13 seen) is far inside 1e-9 * scale, even where IBP's magnitudes are loose (~7e4 on VNN-COMP's
6-layer MNIST network, a band of ~7e-5 against margins of ~1). Recomputing in float64 is what makes
the band small; scaling a float32 band by CROWN's tighter magnitudes alone would not be sound for
the IBP bounds that the intersection keeps, whose error follows IBP's own magnitudes. Where even
this band cannot be cleared (an attack found a point of the box whose margin is below a class's
threshold), the result is ``unknown: cannot clear the float band`` with the numbers, at once.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from harness.attacks.autoattack import autoattack
from harness.attacks.pgd import pgd_attack
from harness.bounds import FP64_ABS_TOL, FP64_REL_TOL
from harness.bounds.complete import CompleteResult, verify_box
from harness.bounds.ibp import ibp_bounds
from harness.bounds.milp import MILPNetwork, intersect_relu_bounds
from harness.bounds.spec import spec_matrix
from harness.bounds.tighten import flat_bounds, tightened_for_milp

__all__ = ["STAGES", "Box", "VerificationResult", "VerifySettings", "Verifier"]

#: The stages in the order they run.
STAGES = ("clean", "pgd", "ibp", "crown", "alpha-crown", "autoattack", "lp", "milp")


@dataclass(frozen=True)
class VerifySettings:
    """Budgets of the stages. ``time_limit_s`` caps the whole instance (the MILP gets what is left)."""

    time_limit_s: float = 60.0
    pgd_steps: int = 100
    pgd_restarts: int = 5
    autoattack: bool = True
    alpha_crown: bool = True
    alpha_iterations: int = 20
    milp: bool = True
    # share of the time left before the MILP that LP tightening may take (0: no tightening)
    lp_tighten_share: float = 0.5
    seed: int = 0


@dataclass
class Box:
    """An input box: the real box [lo, hi] (float64 as parsed), rounded two ways for two uses.

    ``outer``: float64, one ulp outward: contains the real box (the numbers of a VNN-LIB file are
    decimals; float64 parsing rounds to nearest), what bounds and the MILP are computed over.
    ``inner32``: the float32 points inside the float64 box, where counterexamples are taken.
    """

    lo: np.ndarray
    hi: np.ndarray
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        lo = np.asarray(self.lo, dtype=np.float64).reshape(-1)
        hi = np.asarray(self.hi, dtype=np.float64).reshape(-1)
        n = math.prod(self.shape)
        if lo.size != n or hi.size != n:
            raise ValueError(f"the box has {lo.size} inputs but the network takes {n} (shape {self.shape})")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError("the box must be finite")
        bad = np.flatnonzero(~(lo <= hi))
        if bad.size:
            raise ValueError(f"the box is empty at input {bad[0]}: [{lo[bad[0]]!r}, {hi[bad[0]]!r}]")
        out = np.flatnonzero((lo < 0) | (hi > 1))
        if out.size:
            i = out[0]
            raise ValueError(f"the box leaves [0, 1] (pixel space) at input {i}: [{lo[i]!r}, {hi[i]!r}] "
                             f"({out.size} input(s) outside)")
        self.lo, self.hi = lo, hi

    @property
    def outer(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.maximum(np.nextafter(self.lo, -np.inf), 0.0), np.minimum(np.nextafter(self.hi, np.inf), 1.0))

    @property
    def inner32(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        lo32, hi32 = self.lo.astype(np.float32), self.hi.astype(np.float32)
        lo32 = np.where(lo32.astype(np.float64) < self.lo, np.nextafter(lo32, np.float32(np.inf)), lo32)
        hi32 = np.where(hi32.astype(np.float64) > self.hi, np.nextafter(hi32, np.float32(-np.inf)), hi32)
        if not np.all(lo32 <= hi32):
            return None
        return torch.from_numpy(lo32.copy()), torch.from_numpy(hi32.copy())

    def contains(self, x: torch.Tensor) -> bool:
        """Whether the stored values of ``x`` lie in the float64 box [lo, hi] (exact comparison)."""
        v = x.detach().double().reshape(-1).cpu().numpy()
        return bool(np.all((v >= self.lo) & (v <= self.hi)))


@dataclass
class VerificationResult:
    """Outcome of one instance.

    status: "sat", "unsat", "unknown" or "timeout". stage: the stage that decided (for unknown /
    timeout: the last that ran). reason: why, for unknown / timeout (per class where the MILP ran).
    counterexample: for sat, the float32 input (shaped like the network input) and ``output`` its
    float32 logits. margins: the best (smallest) lower bound of z_label - z_j per class j that a
    bound stage proved (float64), and band the float64 band they were judged against.
    """

    status: str
    stage: str
    reason: str = ""
    counterexample: torch.Tensor | None = None
    output: torch.Tensor | None = None
    time_s: float = 0.0
    stage_times: dict[str, float] = field(default_factory=dict)
    band: float = math.nan
    margins: dict[int, float] = field(default_factory=dict)
    complete: CompleteResult | None = field(default=None, repr=False)


class _Reparam(nn.Module):
    """u -> model(lo + (hi - lo) * u): the box as the unit cube, for attacks that take an l_inf ball."""

    def __init__(self, model: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> None:
        super().__init__()
        self.model, self.lo, self.width = model, lo, hi - lo

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # u may come flattened to (N, 1, 1, n): AutoAttack takes image-shaped batches only
        return self.model(self.lo + self.width * u.reshape((-1,) + tuple(self.lo.shape[1:])))


class Verifier:
    """One network, many boxes: the float32 model, its float64 copy and its MILP encoding, built once.

    ``model``: an eval-mode ``nn.Sequential`` of :data:`harness.models.SUPPORTED_LAYERS` (e.g. from
    :func:`harness.exchange.onnx_io.onnx_to_torch`), float32. ``in_shape``: its input shape without
    the batch dimension.
    """

    def __init__(self, model: nn.Module, in_shape: tuple[int, ...], settings: VerifySettings | None = None,
                 accept: Callable[[torch.Tensor], bool] | None = None) -> None:
        training = sorted({type(m).__name__ for m in model.modules() if m.training})
        if training:
            raise ValueError(f"verification needs the model in eval mode (in training mode: {', '.join(training)})")
        self.model = model.float().eval()
        self.model64 = copy.deepcopy(self.model).double().eval()
        self.in_shape = tuple(in_shape)
        self.settings = settings or VerifySettings()
        # a further test a counterexample must pass (e.g. a property checked exactly on other outputs); a
        # point it rejects is not a counterexample, and the search goes on
        self.accept = accept
        # alpha-CROWN optimises ReLU slopes: a network without ReLUs has none (auto_LiRPA fails on it),
        # and CROWN is exact there already
        self._has_relu = any(type(m) is nn.ReLU for m in self.model.modules())
        with torch.no_grad():
            self.num_classes = int(self.model(torch.zeros((1,) + self.in_shape)).shape[1])
        self._net: MILPNetwork | None = None

    @property
    def net(self) -> MILPNetwork:
        if self._net is None:  # built on first use: most instances never reach the MILP
            self._net = MILPNetwork.from_model(self.model, self.in_shape)
        return self._net

    # ------------------------------------------------------------------------------------- helpers
    def _violation(self, x32: torch.Tensor, label: int) -> torch.Tensor | None:
        """(float32 logits) if some other class is >= the label at x32 in float32 and in float64, else None."""
        with torch.no_grad():
            z = self.model(x32.view((1,) + self.in_shape))[0]
            z64 = self.model64(x32.double().view((1,) + self.in_shape))[0]
        for out in (z, z64):
            others = torch.cat([out[:label], out[label + 1:]])
            if not bool(others.max() >= out[label]):
                return None
        return z

    def _margins(self, x32: torch.Tensor, label: int) -> dict[int, float]:
        with torch.no_grad():
            z = self.model64(x32.double().view((-1,) + self.in_shape))
        m = (z[:, label:label + 1] - z).amin(0)
        return {j: float(m[j]) for j in range(self.num_classes) if j != label}

    # ---------------------------------------------------------------------------------------- verify
    def verify(self, box: Box, label: int) -> VerificationResult:
        """Decide whether every input of ``box`` keeps ``label`` strictly on top (see the module docstring)."""
        s = self.settings
        if tuple(box.shape) != self.in_shape:
            raise ValueError(f"the box has shape {box.shape}, the network takes {self.in_shape}")
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label must lie in [0, {self.num_classes - 1}], got {label}")
        t0 = time.perf_counter()
        times: dict[str, float] = {}
        seen: dict[int, float] = {}  # per class, the smallest margin at a point of the box (attacks)

        def left() -> float:
            return s.time_limit_s - (time.perf_counter() - t0)

        def done(status: str, stage: str, reason: str = "", **kw) -> VerificationResult:
            return VerificationResult(status, stage, reason, time_s=time.perf_counter() - t0, stage_times=times, **kw)

        def found(x32: torch.Tensor, stage: str) -> VerificationResult | None:
            z = self._violation(x32, label)
            if z is not None and box.contains(x32) and (self.accept is None or self.accept(x32)):
                return done("sat", stage, counterexample=x32.view(self.in_shape).clone(), output=z)
            for j, m in self._margins(x32, label).items():
                seen[j] = min(seen.get(j, math.inf), m)
            return None

        inner = box.inner32
        # clean: the centre of the float32 box
        t = time.perf_counter()
        if inner is not None:
            centre = torch.minimum(torch.maximum(((inner[0].double() + inner[1].double()) / 2).float(), inner[0]), inner[1])
            hit = found(centre, "clean")
            times["clean"] = time.perf_counter() - t
            if hit:
                return hit
            # pgd
            t = time.perf_counter()
            hit = self._pgd(inner, label, found)
            times["pgd"] = time.perf_counter() - t
            if hit:
                return hit

        # bounds, float64, over the outward box
        lo64, hi64 = (torch.from_numpy(a.copy()).view((1,) + self.in_shape) for a in box.outer)
        y = torch.tensor([label])
        C = spec_matrix(y, self.num_classes, torch.float64)
        t = time.perf_counter()
        with torch.no_grad():
            logits = self.model64((lo64 + hi64) / 2)
            ib = ibp_bounds(self.model64, lo64, hi64, C)
        own, best = ib.preact, ib.lower[0].clone()
        magnitudes = [float(logits.abs().max())] + [float(torch.maximum(u.abs(), l.abs()).max()) for l, u in own]
        times["ibp"] = time.perf_counter() - t

        def band_now() -> float:
            finite = best[torch.isfinite(best)].abs()
            scale = max(magnitudes + [float(finite.max()) if finite.numel() else 0.0])
            return FP64_ABS_TOL + FP64_REL_TOL * scale

        def margins() -> dict[int, float]:
            js = [j for j in range(self.num_classes) if j != label]
            return dict(zip(js, best.tolist()))

        def proven(stage: str) -> VerificationResult | None:
            band = band_now()
            if float(best.min()) > band:
                return done("unsat", stage, band=band, margins=margins())
            return None

        if (r := proven("ibp")):
            return r
        if left() <= 0:
            return done("timeout", "ibp", "the time limit was spent before CROWN", band=band_now(), margins=margins())

        from harness.bounds import lirpa  # lazy: importing auto_LiRPA patches torch (harness.bounds.lirpa_compat)

        centre64 = ((lo64 + hi64) / 2).clamp(min=lo64, max=hi64)
        kw = dict(box=(lo64, hi64))
        t = time.perf_counter()
        margin, crown = lirpa.lirpa_relu_bounds(self.model64, centre64, y, 0.0, "crown", return_margins=True, **kw)
        best = torch.maximum(best, margin[0])
        bounds = intersect_relu_bounds(own, crown)
        magnitudes += [float(torch.maximum(u.abs(), l.abs()).max()) for l, u in crown]
        times["crown"] = time.perf_counter() - t
        if (r := proven("crown")):
            return r

        if s.alpha_crown and self._has_relu and left() > 0:
            t = time.perf_counter()
            aopt = dict(alpha_iterations=s.alpha_iterations, **kw)
            margin, alpha = lirpa.lirpa_relu_bounds(self.model64, centre64, y, 0.0, "alpha-crown",
                                                    return_margins=True, **aopt)
            best = torch.maximum(best, margin[0])
            bounds = intersect_relu_bounds(bounds, alpha)
            magnitudes += [float(torch.maximum(u.abs(), l.abs()).max()) for l, u in alpha]
            times["alpha-crown"] = time.perf_counter() - t
            if (r := proven("alpha-crown")):
                return r

        if s.autoattack and inner is not None and left() > 0:
            t = time.perf_counter()
            hit = self._autoattack(inner, label, found)
            times["autoattack"] = time.perf_counter() - t
            if hit:
                return hit

        band = band_now()
        last = [st for st in STAGES if st in times][-1]
        if not s.milp:
            return done("unknown", last, f"bounds do not prove it (smallest margin bound {float(best.min()):.4g}, "
                                         f"band {band:.3g}) and the MILP is off", band=band, margins=margins())
        if left() <= 0:
            return done("timeout", last, "the time limit was spent before the MILP", band=band, margins=margins())
        olo, ohi = box.outer
        tightening = ""
        if s.lp_tighten_share > 0 and len(bounds) > 1 and not self._cannot_clear(seen, band):
            t = time.perf_counter()
            # the LP is built on the bounds widened by the band, as the MILP widens them
            bounds, tightening = tightened_for_milp(self.net, olo, ohi, flat_bounds(bounds), band, threads=1,
                                                    time_limit_s=max(left() * s.lp_tighten_share, 0.0))
            times["lp"] = time.perf_counter() - t
            if left() <= 0:
                return done("timeout", "lp", f"the time limit was spent tightening ({tightening})", band=band,
                            margins=margins())
        t = time.perf_counter()
        res = verify_box(self.net, self.model, olo, ohi, label, bounds, band=band, margin_lower=best, box32=inner,
                         node_limit=10 ** 9, time_limit_s=left(), threads=1, attack_margins=seen)
        times["milp"] = time.perf_counter() - t
        if tightening:
            res.reason = f"{tightening}; {res.reason}" if res.reason else tightening
        for c in res.classes:
            best_j = max(float(best[c.target - (c.target > label)]), c.lower_bound)
            best[c.target - (c.target > label)] = best_j
        if res.verdict == "verified":
            return done("unsat", "milp", band=band, margins=margins(), complete=res)
        if res.verdict == "counterexample":
            x32 = res.counterexample.float().reshape(-1)
            hit = found(x32, "milp")
            if hit:
                hit.complete = res
                return hit
            return done("unknown", "milp", "the MILP's counterexample failed the forward-pass check here",
                        band=band, margins=margins(), complete=res)
        status = "timeout" if res.wall_clock_limited else "unknown"
        return done(status, "milp", res.reason, band=band, margins=margins(), complete=res)

    @staticmethod
    def _cannot_clear(seen: dict[int, float], band: float) -> bool:
        """Whether an attack already found a point whose margin no proof can clear (the MILP says so at once)."""
        return any(m <= band for m in seen.values())

    # --------------------------------------------------------------------------------------- attacks
    def _pgd(self, inner, label: int, found) -> VerificationResult | None:
        s = self.settings
        lo32, hi32 = (t.view((1,) + self.in_shape) for t in inner)
        g = _Reparam(self.model, lo32, hi32).eval()
        u0 = torch.full_like(lo32, 0.5)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed)
            u = pgd_attack(g, u0, torch.tensor([label]), 0.5, steps=s.pgd_steps, restarts=s.pgd_restarts,
                           loss="margin")
        return found(self._back(u, lo32, hi32), "pgd")

    def _autoattack(self, inner, label: int, found) -> VerificationResult | None:
        lo32, hi32 = (t.view((1,) + self.in_shape) for t in inner)
        g = _Reparam(self.model, lo32, hi32).eval()
        u0 = torch.full((1, 1, 1, lo32.numel()), 0.5)  # AutoAttack's (N, C, H, W); _Reparam reshapes
        r = autoattack(g, u0, torch.tensor([label]), 0.5, seed=self.settings.seed, batch_size=1)
        if bool(r.robust[0]):
            return None
        return found(self._back(r.x_adv, lo32, hi32), "autoattack")

    @staticmethod
    def _back(u: torch.Tensor, lo32: torch.Tensor, hi32: torch.Tensor) -> torch.Tensor:
        """The attack's point u in x space, float32, clipped into the float32 box."""
        with torch.no_grad():
            x = lo32 + (hi32 - lo32) * u.float().reshape(lo32.shape)
        return torch.minimum(torch.maximum(x, lo32), hi32).reshape(-1)
