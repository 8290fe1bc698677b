"""Output properties beyond "the label wins": any disjunction of conjunctions of linear constraints.

A VNN-LIB output constraint describes the *unsafe* set, in disjunctive normal form: clauses joined by
"or", each a conjunction of rows ``C[i] . y <= b[i]`` (e.g. ``(assert (<= Y_0 3.5))``; ``(assert (or
(<= Y_2 Y_0) (>= Y_1 0.25)))``; "Y_0 is the smallest output" as one clause of four rows). The verifier
of :mod:`.api` decides one form of it, "some Y_j >= Y_label". Every DNF reduces to that form *exactly*
by a head appended to the network (:func:`head_network`): it computes ``w_i = b_i - C[i] . y`` per
row, the minimum ``m_k`` of each clause's rows (with ReLUs: ``min(a, c) = relu(a) - relu(-a) -
relu(a - c)``), and outputs (0, m_1, ..., m_K). Clause k is met iff ``m_k >= 0``, so "class 0 wins
everywhere on the box" for the longer network is "no clause can be met", and every stage of the API
(attacks, IBP, CROWN, alpha-CROWN, LP tightening, the MILP, whose binaries make the minima exact)
runs unchanged on it.

Exactness, since "unsat" must mean unsat:

- The head is made of float32 layers (the MILP encodes the float32 model; the float64 copy every
  bound is computed on then holds the same numbers). A coefficient of ``C`` that is not a float32
  number is refused (VNN-LIB's coefficients are +-1 in practice): rounding it could move the
  property. The minimum layers' weights are 0 and +-1.
- A bound ``b_i`` that is not a float32 number is rounded *up*, to ``b_i' >= b_i``: a proof that no
  point meets the rows with ``b'`` is a proof that none meets them with ``b``.
- A point where the longer network puts a clause at or above class 0 meets that clause with ``b'``;
  it counts as a counterexample only if the network's own float32 *and* float64 outputs meet a clause
  with ``b`` exactly (rational arithmetic, :meth:`LinearProperty.met_by`, the API's ``accept`` test).
  A point between ``b`` and ``b'`` is never ``sat``: the search goes on past it.
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
    """The unsafe set ``OR_k AND_{i in clauses[k]} (C[i] . y <= b[i])`` over the network's outputs y.

    C: (rows, n_outputs) float64 whose entries are float32 numbers; b: (rows,) float64 (as parsed);
    clauses: the row indices of each clause (a conjunction), in order.
    """

    C: np.ndarray
    b: np.ndarray
    clauses: tuple[tuple[int, ...], ...]

    @classmethod
    def from_clauses(cls, clauses: list[tuple[np.ndarray, np.ndarray]], n_outputs: int) -> LinearProperty:
        """From VNN-LIB's DNF (a list of (A, b), each the conjunction A @ y <= b); ValueError naming a bad clause."""
        if not clauses:
            raise ValueError("the property has no output constraint")
        rows, bounds, groups = [], [], []
        for k, (A, b) in enumerate(clauses):
            A, b = np.asarray(A, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(-1)
            if A.ndim != 2 or A.shape[1] != n_outputs or A.shape[0] != b.size or b.size == 0:
                raise ValueError(f"clause {k + 1} of the output property: expected rows over {n_outputs} outputs")
            if not (np.isfinite(A).all() and np.isfinite(b).all()):
                raise ValueError(f"clause {k + 1}: constraints must be finite")
            bad = np.argwhere(A.astype(np.float32).astype(np.float64) != A)
            if bad.size:
                r, j = bad[0]
                raise ValueError(f"clause {k + 1}: the coefficient {float(A[r, j])!r} of Y_{j} is not a float32 "
                                 f"number (the network computes in float32; rounding it would change the property)")
            groups.append(tuple(range(len(rows), len(rows) + b.size)))
            rows.extend(A)
            bounds.extend(b.tolist())
        return cls(np.stack(rows), np.array(bounds), tuple(groups))

    @property
    def b_up(self) -> np.ndarray:
        """Each bound rounded up to a float32 (b itself where it is one), as float64."""
        b32 = self.b.astype(np.float32)
        b32 = np.where(b32.astype(np.float64) < self.b, np.nextafter(b32, np.float32(np.inf)), b32)
        return b32.astype(np.float64)

    def fingerprint(self) -> str:
        """A short id of the property (which cached verifier serves it)."""
        return hashlib.sha256(self.C.tobytes() + self.b.tobytes() + repr(self.clauses).encode()).hexdigest()[:16]

    def met_by(self, y) -> bool:
        """Whether the output vector ``y`` (float values, taken exactly) meets every constraint of some clause."""
        ys = [Fraction(float(v)) for v in np.asarray(y, dtype=np.float64).reshape(-1)]

        def row_met(i: int) -> bool:
            lhs = sum((Fraction(float(c)) * v for c, v in zip(self.C[i], ys) if c != 0), Fraction(0))
            return lhs <= Fraction(float(self.b[i]))

        return any(all(row_met(i) for i in group) for group in self.clauses)


def _linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    """A float32 Linear holding exactly these float64 values (which must be float32 numbers)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    layer.requires_grad_(False)
    # checked, not assumed: the layer is the property
    if not (np.array_equal(layer.weight.double().numpy(), weight) and np.array_equal(layer.bias.double().numpy(), bias)):
        raise RuntimeError("a layer of the property's head does not hold its values exactly")
    return layer


def head_network(model: nn.Sequential, prop: LinearProperty) -> nn.Sequential:
    """``model`` followed by the head: outputs (0, m_1, ..., m_K) with m_k = min over clause k's rows of
    ``b_i' - C[i] . y``; clause k is met iff m_k >= 0, so class 0 wins iff no clause is met.

    The minimum of a clause's rows is a tree of ``min(a, c) = relu(a) - relu(-a) - relu(a - c)``, one
    ReLU layer per level, exact in real arithmetic. Every weight after the first layer (which holds
    -C and b') is 0 or +-1, sums of +-1 over disjoint units included, so float32 holds it exactly (each
    layer is checked). A property of single-row clauses gets one Linear layer and no ReLU.
    """
    layers: list[nn.Module] = []
    mix = np.eye(len(prop.b))  # the current values as signed sums of the last layer's outputs
    groups = [list(g) for g in prop.clauses]  # per clause, the indices of its current values
    while any(len(g) > 1 for g in groups):
        units: list[np.ndarray] = []  # the next ReLU layer's inputs, over the current values
        combos: list[list[tuple[int, float]]] = []  # each next value as a signed sum of those units
        new_groups = []
        eye = np.eye(mix.shape[0])
        for g in groups:
            new_g = []
            for a, c in zip(g[0::2], g[1::2] + [None]):
                at = len(units)
                units += [eye[a], -eye[a]] + ([eye[a] - eye[c]] if c is not None else [])
                combos.append([(at, 1.0), (at + 1, -1.0)] + ([(at + 2, -1.0)] if c is not None else []))
                new_g.append(len(combos) - 1)
            new_groups.append(new_g)
        U = np.stack(units) @ mix
        layers += [_linear(U, np.zeros(len(U))), nn.ReLU()]
        mix = np.zeros((len(combos), len(U)))
        for r, terms in enumerate(combos):
            for unit, sign in terms:
                mix[r, unit] = sign
        groups = new_groups
    select = np.zeros((len(groups) + 1, mix.shape[0]))
    for k, g in enumerate(groups):
        select[k + 1, g[0]] = 1.0
    if not layers:  # single-row clauses: the selection (0/1, one per row) folds into the first layer exactly
        return nn.Sequential(*model, _linear(select @ -prop.C, select @ prop.b_up)).float().eval()
    first = _linear(-prop.C, prop.b_up)  # one value w_i = b_i' - C[i] . y per row
    return nn.Sequential(*model, first, *layers, _linear(select @ mix, np.zeros(len(select)))).float().eval()


class PropertyVerifier:
    """The API's :class:`Verifier` on ``model`` + the property's head; a point counts as a counterexample
    only if the network's own float32 and float64 outputs there meet a clause exactly."""

    def __init__(self, model: nn.Sequential, in_shape: tuple[int, ...], prop: LinearProperty,
                 settings: VerifySettings | None = None) -> None:
        self.model, self.prop = model.float().eval(), prop
        self.inner = Verifier(head_network(self.model, prop), in_shape, settings, accept=self.meets)
        self._model64 = self.inner.model64[:len(self.model)]

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
            y64 = self._model64(x.double().view(shape))[0].numpy()
        return y32, y64

    def meets(self, x: torch.Tensor) -> bool:
        """Whether ``x``'s float32 and float64 outputs both meet some clause of the property, exactly."""
        y32, y64 = self.outputs(x)
        return self.prop.met_by(y32) and self.prop.met_by(y64)

    def verify(self, box: Box) -> VerificationResult:
        """``sat`` (some point of ``box`` meets a clause, checked exactly), ``unsat`` (none can) or ``unknown`` / ``timeout``."""
        r = self.inner.verify(box, 0)
        if r.status == "sat":
            r.output = torch.from_numpy(self.outputs(r.counterexample)[0]).float()  # the network's, not the head's
        return r
