"""VNN-LIB properties: an input box and an output property, read and written.

VNN-LIB (the property format of VNN-COMP) is a subset of SMT-LIB: ``(declare-const X_i Real)`` for
the flattened network input, ``(declare-const Y_j Real)`` for its outputs, and ``(assert ...)``
constraints. A property file describes the *unsafe* set: the instance is ``sat`` when some input
satisfying every input constraint produces an output satisfying the output constraints (a
counterexample), ``unsat`` when none does.

What this module reads (what the classification benchmarks of VNN-COMP use):

- input constraints ``(assert (<= X_i c))`` / ``(assert (>= X_i c))`` (either operand order), one
  lower and one upper bound per input: the box [lo, hi];
- output constraints: any nesting of ``or`` / ``and`` over atoms ``(<= a b)`` / ``(>= a b)`` whose
  operands are ``Y_j`` or numbers, as a disjunction of conjunctions (DNF) of rows ``A y <= b``.

:func:`classification_label` recognises VNN-COMP's classification form, "some other class scores
at least as high as the label" (``(or (and (>= Y_j Y_l)) ...)`` over every j != l), which is what the
verifier of :mod:`harness.verification` decides. Anything else is a :class:`VNNLibError` naming the
line. Numbers are read as Python floats (the nearest float64 to the decimal); :func:`write_vnnlib`
writes float32 values as the shortest decimal that reads back to the same float32 *and* float64
value, so a written box parses back bit for bit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["VNNLibError", "Property", "parse_vnnlib", "read_vnnlib", "write_vnnlib", "classification_label"]


class VNNLibError(ValueError):
    """A VNN-LIB file this reader cannot use; the message names the file and line."""


@dataclass
class Property:
    """A parsed VNN-LIB property.

    lo, hi: (n_inputs,) float64, the input box (flattened in the network input's row-major order).
    clauses: the unsafe output set as a disjunction; each clause is (A, b) with the conjunction
    A @ y <= b (A: (rows, n_outputs) float64).
    n_outputs: number of declared outputs Y_j.
    """

    lo: np.ndarray
    hi: np.ndarray
    clauses: list[tuple[np.ndarray, np.ndarray]]
    n_outputs: int


_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")


def _tokens(text: str, where: str):
    """(token, line) pairs; comments (';' to the end of the line) dropped."""
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split(";", 1)[0]
        for m in _TOKEN.finditer(line):
            yield m.group(0), lineno


def _sexprs(text: str, where: str) -> list[tuple[object, int]]:
    """Top-level s-expressions as nested lists of atoms, each with the line it starts on."""
    stack: list[list] = []
    out: list[tuple[object, int]] = []
    start = 0
    for tok, line in _tokens(text, where):
        if tok == "(":
            if not stack:
                start = line
            stack.append([])
        elif tok == ")":
            if not stack:
                raise VNNLibError(f"{where}:{line}: unbalanced ')'")
            done = stack.pop()
            if stack:
                stack[-1].append(done)
            else:
                out.append((done, start))
        else:
            if not stack:
                raise VNNLibError(f"{where}:{line}: {tok!r} outside parentheses")
            stack[-1].append(tok)
    if stack:
        raise VNNLibError(f"{where}:{start}: unbalanced '(' (the expression starting here never closes)")
    return out


def _number(tok: object) -> float | None:
    if not isinstance(tok, str):
        return None
    try:
        value = float(tok)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _var(tok: object) -> tuple[str, int] | None:
    m = _VAR.match(tok) if isinstance(tok, str) else None
    return (m.group(1), int(m.group(2))) if m else None


def parse_vnnlib(text: str, where: str = "<vnnlib>") -> Property:
    """Parse VNN-LIB ``text`` (see the module docstring); ``where`` names the source in errors."""
    declared = {"X": set(), "Y": set()}
    input_bounds: dict[int, list[float | None]] = {}
    output_atoms: list[tuple[object, int]] = []
    for expr, line in _sexprs(text, where):
        if not isinstance(expr, list) or not expr:
            raise VNNLibError(f"{where}:{line}: empty expression")
        head = expr[0]
        if head == "declare-const":
            v = _var(expr[1]) if len(expr) == 3 else None
            if v is None or expr[2] != "Real":
                raise VNNLibError(f"{where}:{line}: expected (declare-const X_i Real) or (declare-const Y_j Real)")
            declared[v[0]].add(v[1])
        elif head == "assert":
            if len(expr) != 2 or not isinstance(expr[1], list):
                raise VNNLibError(f"{where}:{line}: expected (assert (...))")
            body = expr[1]
            if _mentions_input(body) and not _is_input_bound(body):
                raise VNNLibError(f"{where}:{line}: unsupported input constraint {_show(body)} (expected "
                                  f"(<= X_i number) or (>= X_i number): a box)")
            if _is_input_bound(body):
                op, a, b = body
                va, vb = _var(a), _var(b)
                idx, value = (va[1], _number(b)) if va else (vb[1], _number(a))
                # (<= X c) and (>= c X) are upper bounds; the others lower bounds
                upper = (op == "<=") == bool(va)
                pair = input_bounds.setdefault(idx, [None, None])
                slot = 1 if upper else 0
                if pair[slot] is not None:
                    raise VNNLibError(f"{where}:{line}: a second {'upper' if upper else 'lower'} bound of X_{idx}")
                pair[slot] = value
            else:
                output_atoms.append((body, line))
        else:
            raise VNNLibError(f"{where}:{line}: unsupported command {head!r} (expected declare-const or assert)")
    n_in, n_out = len(declared["X"]), len(declared["Y"])
    if declared["X"] != set(range(n_in)) or declared["Y"] != set(range(n_out)):
        raise VNNLibError(f"{where}: inputs and outputs must be declared as X_0..X_(n-1) and Y_0..Y_(m-1)")
    if n_in == 0 or n_out == 0:
        raise VNNLibError(f"{where}: no input (X_i) or no output (Y_j) declared")
    lo, hi = np.empty(n_in), np.empty(n_in)
    for i in range(n_in):
        pair = input_bounds.get(i, [None, None])
        if pair[0] is None or pair[1] is None:
            raise VNNLibError(f"{where}: input X_{i} lacks a {'lower' if pair[0] is None else 'upper'} bound")
        lo[i], hi[i] = pair
        if lo[i] > hi[i]:
            raise VNNLibError(f"{where}: input X_{i} has an empty range [{lo[i]!r}, {hi[i]!r}]")
    if not output_atoms:
        raise VNNLibError(f"{where}: no output constraint")
    # Several asserts are a conjunction: distribute into one DNF.
    dnf: list[list[tuple[np.ndarray, float]]] = [[]]
    for body, line in output_atoms:
        part = _dnf(body, n_out, where, line, declared)
        dnf = [a + b for a in dnf for b in part]
    clauses = [(np.array([r[0] for r in c]), np.array([r[1] for r in c])) for c in dnf]
    return Property(lo, hi, clauses, n_out)


def _mentions_input(expr: object) -> bool:
    if isinstance(expr, list):
        return any(_mentions_input(e) for e in expr)
    v = _var(expr)
    return v is not None and v[0] == "X"


def _show(expr: object) -> str:
    return "(" + " ".join(_show(e) for e in expr) + ")" if isinstance(expr, list) else str(expr)


def _is_input_bound(body: list) -> bool:
    if len(body) != 3 or body[0] not in ("<=", ">="):
        return False
    va, vb = _var(body[1]), _var(body[2])
    return (va is not None and va[0] == "X" and _number(body[2]) is not None) or \
           (vb is not None and vb[0] == "X" and _number(body[1]) is not None)


def _dnf(expr: object, n_out: int, where: str, line: int, declared) -> list[list[tuple[np.ndarray, float]]]:
    """The disjunction of conjunctions of rows (a, b) meaning a @ y <= b that ``expr`` denotes."""
    if not isinstance(expr, list) or not expr:
        raise VNNLibError(f"{where}:{line}: expected an output constraint, got {expr!r}")
    head = expr[0]
    if head == "or":
        return [c for sub in expr[1:] for c in _dnf(sub, n_out, where, line, declared)]
    if head == "and":
        out: list[list] = [[]]
        for sub in expr[1:]:
            part = _dnf(sub, n_out, where, line, declared)
            out = [a + b for a in out for b in part]
        return out
    if head in ("<=", ">=") and len(expr) == 3:
        row, const = np.zeros(n_out), 0.0
        # lhs - rhs <= 0 for '<=', rhs - lhs <= 0 for '>='
        for tok, sign in ((expr[1], 1.0), (expr[2], -1.0)):
            sign = sign if head == "<=" else -sign
            v, c = _var(tok), _number(tok)
            if v is not None and v[0] == "Y" and v[1] in declared["Y"]:
                row[v[1]] += sign
            elif c is not None:
                const -= sign * c
            else:
                raise VNNLibError(f"{where}:{line}: unsupported operand {tok!r} in an output constraint "
                                  f"(expected Y_j or a number; input variables only in bounds of their own)")
        return [[(row, const)]]
    raise VNNLibError(f"{where}:{line}: unsupported output constraint {head!r} (expected or / and / <= / >=)")


def read_vnnlib(path: Path | str) -> Property:
    """Parse a VNN-LIB file (a ``.gz`` one is decompressed)."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            import gzip  # stdlib; only the compressed benchmarks need it

            text = gzip.decompress(path.read_bytes()).decode()
        else:
            text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise VNNLibError(f"{path}: cannot read: {err}") from err
    return parse_vnnlib(text, str(path))


def classification_label(prop: Property) -> int | None:
    """The label l if the property is "some Y_j >= Y_l, j != l" over every other class, else None.

    Each clause must be the single row e_j - e_l <= 0 (i.e. Y_l - Y_j <= 0 after sign conventions:
    the row a with a @ y <= 0, a = e_l - e_j) and the clauses must cover every j != l exactly once.
    """
    rows = []
    for a, b in prop.clauses:
        if a.shape[0] != 1 or b[0] != 0.0:
            return None
        row = a[0]
        pos, neg = np.flatnonzero(row == 1.0), np.flatnonzero(row == -1.0)
        if len(pos) != 1 or len(neg) != 1 or np.count_nonzero(row) != 2:
            return None
        rows.append((int(pos[0]), int(neg[0])))  # (label l, other j): y_l - y_j <= 0
    labels = {l for l, _ in rows}
    if len(labels) != 1:
        return None
    label = labels.pop()
    others = sorted(j for _, j in rows)
    return label if others == [j for j in range(prop.n_outputs) if j != label] else None


def _fmt(v: np.float32) -> str:
    """Shortest decimal that reads back (in float64, hence also in float32) to this float32 value."""
    return repr(float(v))


def write_vnnlib(path: Path | str, lo: np.ndarray, hi: np.ndarray, label: int, num_classes: int,
                 comment: str = "") -> None:
    """Write the classification property "label wins over [lo, hi]" (the unsafe set: some Y_j >= Y_label).

    lo, hi are taken as float32 (the box a float32 network receives); every value is written so that
    it parses back to exactly that float32 (and to the same float64).
    """
    lo32 = np.asarray(lo, dtype=np.float32).reshape(-1)
    hi32 = np.asarray(hi, dtype=np.float32).reshape(-1)
    if lo32.shape != hi32.shape or not np.all(lo32 <= hi32):
        raise ValueError("lo and hi must have the same size and lo <= hi")
    if not 0 <= label < num_classes:
        raise ValueError(f"label must lie in [0, {num_classes - 1}], got {label}")
    lines = [f"; {line}" for line in comment.splitlines()] + [""]
    lines += [f"(declare-const X_{i} Real)" for i in range(lo32.size)] + [""]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)] + [""]
    for i, (a, b) in enumerate(zip(lo32, hi32)):
        lines += [f"(assert (<= X_{i} {_fmt(b)}))", f"(assert (>= X_{i} {_fmt(a)}))"]
    lines += ["", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(num_classes) if j != label]
    lines += ["))", ""]
    Path(path).write_text("\n".join(lines))
