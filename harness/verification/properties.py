"""Output properties beyond "the label wins": a disjunction of linear constraints ``c_i . y <= b_i``.

A VNN-LIB output constraint describes the *unsafe* set. The verifier of :mod:`.api` decides one form
of it, "some Y_j >= Y_label". A disjunction of single-row constraints (e.g. ``(assert (<= Y_0 3.5))``,
``(assert (or (<= Y_2 Y_0) (>= Y_1 0.25)))``) reduces to that form *exactly* by one more linear layer,
the head: it maps the network's outputs y to ``w_0 = 0`` and ``w_i = b_i - c_i . y`` (i = 1..k), and
some ``c_i . y <= b_i`` holds iff some ``w_i >= w_0``. So "class 0 wins everywhere on the box" for the
network with the head is "no constraint of the unsafe set can be met", and every stage of the API
(attacks, IBP, CROWN, alpha-CROWN, LP tightening, the MILP) runs unchanged on the longer network.

Exactness, since "unsat" must mean unsat:

- The head is a float32 layer (the MILP encodes the float32 model; the float64 copy every bound is
  computed on then holds the same numbers). A coefficient of ``c_i`` that is not a float32 number is
  refused (VNN-LIB's coefficients are +-1 in practice): rounding it could move the property.
- A bound ``b_i`` that is not a float32 number is rounded *up*, to ``b_i' >= b_i``: a proof that
  ``c_i . y > b_i'`` on the whole box is a proof that ``c_i . y > b_i``.
- A point the API returns as a counterexample of the longer network meets ``c_i . y <= b_i'``; it is
  accepted only if the network's own float32 *and* float64 outputs meet some ``c_i . y <= b_i``
  exactly (rational arithmetic, :meth:`LinearProperty.met_by`). A point between ``b_i`` and ``b_i'``
  is ``unknown``, never ``sat``.

Clauses of several rows (a conjunction, e.g. "Y_0 is the smallest output") are not reduced: proving
such a clause empty needs the rows together (one MILP with all of them), which the API has not. They
are refused with a clear error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import nn

from harness.verification.api import Box, VerificationResult, Verifier, VerifySettings

__all__ = ["LinearProperty", "PropertyVerifier", "head_network"]


@dataclass(frozen=True)
class LinearProperty:
    """The unsafe set ``OR_i (C[i] . y <= b[i])`` over the network's outputs y.

    C: (k, n_outputs) float64 whose entries are float32 numbers; b: (k,) float64 (as parsed).
    """

    C: np.ndarray
    b: np.ndarray

    @classmethod
    def from_clauses(cls, clauses: list[tuple[np.ndarray, np.ndarray]], n_outputs: int) -> LinearProperty:
        """From VNN-LIB's DNF (a list of (A, b), each the conjunction A @ y <= b); ValueError if not of this form."""
        if not clauses:
            raise ValueError("the property has no output constraint")
        rows, bounds = [], []
        for i, (A, b) in enumerate(clauses):
            A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(-1)
            if A.shape != (1, n_outputs):
                raise ValueError(f"clause {i + 1} of the output property is a conjunction of {A.shape[0]} "
                                 f"constraints; this verifier decides a disjunction of single constraints "
                                 f"(c . y <= b) or the classification form")
            bad = np.flatnonzero(A[0].astype(np.float32).astype(np.float64) != A[0])
            if bad.size:
                raise ValueError(f"clause {i + 1}: the coefficient {float(A[0, bad[0]])!r} of Y_{bad[0]} is not a float32 "
                                 f"number (the network computes in float32; rounding it would change the property)")
            if not (np.isfinite(A).all() and np.isfinite(b).all()):
                raise ValueError(f"clause {i + 1}: constraints must be finite")
            rows.append(A[0])
            bounds.append(float(b[0]))
        return cls(np.stack(rows), np.array(bounds))

    @property
    def b_up(self) -> np.ndarray:
        """Each bound rounded up to a float32 (b itself where it is one), as float64."""
        b32 = self.b.astype(np.float32)
        b32 = np.where(b32.astype(np.float64) < self.b, np.nextafter(b32, np.float32(np.inf)), b32)
        return b32.astype(np.float64)

    def fingerprint(self) -> str:
        """A short id of the property (which cached verifier serves it)."""
        return hashlib.sha256(self.C.tobytes() + self.b.tobytes()).hexdigest()[:16]

    def met_by(self, y) -> bool:
        """Whether the output vector ``y`` (float values, taken exactly) meets some constraint ``C[i] . y <= b[i]``."""
        ys = [Fraction(float(v)) for v in np.asarray(y, dtype=np.float64).reshape(-1)]
        for c, b in zip(self.C, self.b):
            if sum((Fraction(float(ci)) * yj for ci, yj in zip(c, ys) if ci != 0), Fraction(0)) <= Fraction(float(b)):
                return True
        return False


def head_network(model: nn.Sequential, prop: LinearProperty) -> nn.Sequential:
    """``model`` followed by the head ``y -> (0, b' - C y)``: class 0 wins iff no constraint is met."""
    k, n = prop.C.shape
    head = nn.Linear(n, k + 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1:] = torch.from_numpy(-prop.C).float()
        head.bias[1:] = torch.from_numpy(prop.b_up).float()
    out = nn.Sequential(*model, head).float().eval()
    head.requires_grad_(False)
    # the head must hold the property's numbers exactly (checked, not assumed)
    if not (np.array_equal(head.weight[1:].double().numpy(), -prop.C)
            and np.array_equal(head.bias[1:].double().numpy(), prop.b_up)):
        raise RuntimeError("the property's head does not hold its coefficients exactly")
    return out


class PropertyVerifier:
    """The API's :class:`Verifier` on ``model`` + the property's head, with the exact counterexample check."""

    def __init__(self, model: nn.Sequential, in_shape: tuple[int, ...], prop: LinearProperty,
                 settings: VerifySettings | None = None) -> None:
        self.model, self.prop = model.float().eval(), prop
        self.inner = Verifier(head_network(self.model, prop), in_shape, settings)

    @property
    def settings(self) -> VerifySettings:
        return self.inner.settings

    @settings.setter
    def settings(self, value: VerifySettings) -> None:
        self.inner.settings = value

    def outputs(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The network's float32 and float64 outputs at ``x`` (without the head)."""
        shape = (1,) + self.inner.in_shape
        with torch.no_grad():
            y32 = self.model(x.float().view(shape))[0].double().numpy()
            y64 = self.inner.model64[:-1](x.double().view(shape))[0].numpy()
        return y32, y64

    def verify(self, box: Box) -> VerificationResult:
        """``sat`` (some point of ``box`` meets a constraint, checked exactly), ``unsat`` (none can) or ``unknown`` / ``timeout``."""
        r = self.inner.verify(box, 0)
        if r.status == "sat":
            y32, y64 = self.outputs(r.counterexample)
            if self.prop.met_by(y32) and self.prop.met_by(y64):
                r.output = torch.from_numpy(y32).float()  # the network's outputs, not the head's
            else:
                r.status, r.counterexample, r.output = "unknown", None, None
                r.reason = ("a point meets a bound rounded up to float32 but not the property's own bound "
                            "(checked exactly)")
        return r
