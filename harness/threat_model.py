"""The threat model, in one place: the l_inf ball B(x, eps) intersected with the data domain [0, 1].

Every part of the harness that needs the threat model takes it from here: the box a certifier bounds
(round to nearest, :func:`input_box`; rounded outward so that it contains the real box,
:func:`outward_box`, :func:`outward_box64`), the box a MILP counterexample is searched in
(:func:`inner_box32`), the exact membership test of an attack's point (:func:`in_threat_model`) and
the clip that makes a library's point pass it (:func:`clip_to_threat_model`), and the check of the
inputs themselves (:func:`check`). Exactness comes from TwoSum (:func:`harness.runtime.floats.two_sum`):
no tolerance decides a borderline coordinate.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.runtime.floats import two_sum


def check(x: torch.Tensor, eps: float) -> float:
    """``eps`` as a float, after checking the threat model's inputs: eps >= 0 and x inside [0, 1].

    Raises ValueError naming the problem and the fix (NaN fails both checks).
    """
    eps = float(eps)
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"eps must be >= 0, got {eps}")
    if x.numel():
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if not (lo >= 0.0 and hi <= 1.0):  # also rejects NaN
            raise ValueError(f"inputs must lie in [0, 1] (pixel space; normalisation is a model layer), "
                             f"got range [{lo:.4g}, {hi:.4g}]")
    return eps


def input_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The l_inf ball B(x, eps) intersected with the data domain [0, 1], as (lower, upper).

    Raises ValueError (naming the problem and the fix) for eps < 0 or inputs outside [0, 1].
    """
    eps = check(x, eps)
    return (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)


def outward_box(x: torch.Tensor, eps: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The box B(x, eps) ∩ [0, 1] (as :func:`input_box`) in ``dtype``.

    Below float64 each end is rounded to nearest and then moved one ulp outward only where that
    rounding went inward, so the box contains the exact real box around x as given while staying
    within about one ulp of the round-to-nearest box (the one auto_LiRPA bounds).
    """
    if eps == 0.0 and x.dtype == dtype:
        return x, x  # exact
    if dtype == torch.float64 or x.dtype != dtype:
        lo64, hi64 = input_box(x.double(), eps)
        if dtype == torch.float64:
            return lo64, hi64  # one float64 rounding (~1e-16 relative), far inside the float64 tolerance
        lo, hi = lo64.to(dtype), hi64.to(dtype)
        inf = torch.tensor(float("inf"), dtype=dtype, device=x.device)
        # ">=": where the float64 value is itself representable its own rounding is unknown, so move anyway.
        lo = torch.where(lo.double() >= lo64, torch.nextafter(lo, -inf), lo)
        hi = torch.where(hi.double() <= hi64, torch.nextafter(hi, inf), hi)
        return lo.clamp_(min=0.0), hi.clamp_(max=1.0)
    # Same dtype (float32): eps rounded up, then x -+ e with its exact rounding error (TwoSum), all in
    # float32 - about 4x cheaper than going through float64, and this runs on every certified batch.
    e = torch.tensor(eps, dtype=torch.float64).to(dtype)
    if float(e) < eps:
        e = torch.nextafter(e, torch.tensor(float("inf"), dtype=dtype))
    e = e.to(x.device)
    # nextafter towards s - 1 (one ulp down) where the error is negative, towards s itself (no move)
    # elsewhere; sign() arithmetic instead of torch.where, which is ~8x slower here.
    lo, err = two_sum(x, -e)
    lo = torch.nextafter(lo, lo + err.sign().clamp_(max=0.0))
    hi, err = two_sum(x, e)
    hi = torch.nextafter(hi, hi + err.sign().clamp_(min=0.0))
    return lo.clamp_(min=0.0), hi.clamp_(max=1.0)


def outward_box64(x: torch.Tensor, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The real box B(x, eps) ∩ [0, 1] rounded outward in float64 (contains the exact one)."""
    x64, e = x.double().reshape(-1), torch.tensor(eps, dtype=torch.float64)
    inf = torch.tensor(math.inf, dtype=torch.float64)
    lo, err = two_sum(x64, -e)  # lo + err = x - eps exactly
    lo = torch.where(err < 0, torch.nextafter(lo, -inf), lo).clamp(min=0.0)
    hi, err = two_sum(x64, e)
    hi = torch.where(err > 0, torch.nextafter(hi, inf), hi).clamp(max=1.0)
    return lo.numpy(), hi.numpy()


def inner_box32(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The largest float32 box inside the real box B(x, eps) ∩ [0, 1] (None if it holds no float32 point)."""
    x64, e = x.double().reshape(-1), torch.tensor(eps, dtype=torch.float64)
    inf = torch.tensor(math.inf, dtype=torch.float32)
    s, err = two_sum(x64, -e)  # the exact lower end is s + err
    lo = s.float()
    # lo - s is exact (Sterbenz, or lo = 0); lo is below the real end iff lo - s < err.
    lo = torch.where(lo.double() - s < err, torch.nextafter(lo, inf), lo).clamp(min=0.0)
    s, err = two_sum(x64, e)
    hi = s.float()
    hi = torch.where(hi.double() - s > err, torch.nextafter(hi, -inf), hi).clamp(max=1.0)
    if bool((lo > hi).any()):
        return None
    return lo, hi


def _inside(points: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Elementwise: the stored value of ``points`` lies in [x - eps, x + eps] ∩ [0, 1], exactly.

    The difference is formed in float64 (exact for inputs of float32 or float64) together with its
    rounding error (TwoSum). Round-to-nearest is monotone and eps is a float64, so |d| < eps or
    |d| > eps settles a coordinate; only |d| == eps needs the error's sign. NaN is outside.
    """
    p64, x64 = points.detach().double(), x.detach().double()
    d, err = two_sum(p64, -x64)
    size = d.abs()
    # |d + err| <= eps: where |d| == eps, err must not point away from zero (err * sign(d) <= 0).
    inside = (size < eps) | ((size == eps) & (err * d.sign() <= 0))
    return inside & (p64 >= 0.0) & (p64 <= 1.0)


def in_threat_model(points: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """(N,) bool: True where every coordinate of ``points`` lies in B(x, eps) ∩ [0, 1], exactly.

    ``points`` and ``x`` are taken as the exact real numbers they store and ``eps`` as the exact
    real number of the Python float: no tolerance and no rounding decides a borderline coordinate.
    """
    if points.shape != x.shape:
        raise ValueError(f"points must have the shape of x, got {tuple(points.shape)} and {tuple(x.shape)}")
    return _inside(points, x, float(eps)).flatten(1).all(1)


def _inner_end(x: torch.Tensor, eps: float, sign: float) -> torch.Tensor:
    """x + sign * eps clamped to [0, 1] in x's dtype, moved one step towards x where rounding left the ball."""
    end = (x.double() + sign * eps).clamp(0.0, 1.0).to(x.dtype)
    # One step suffices: the float64 sum is off by far less than one unit of x's dtype.
    return torch.where(_inside(end, x, eps), end, torch.nextafter(end, x))


def clip_to_threat_model(points: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``points`` (cast to x's dtype) clipped coordinate-wise into B(x, eps) ∩ [0, 1] as stored in x's dtype.

    For a library's point that ended a rounding outside the ball (a box end rounded away from x).
    The result still has to pass :func:`in_threat_model`; this only makes that possible.
    """
    eps = float(eps)
    p = points.detach().to(x.dtype)
    return torch.min(torch.max(p, _inner_end(x, eps, -1.0)), _inner_end(x, eps, 1.0))
