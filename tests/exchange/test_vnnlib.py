"""VNN-LIB: a written box parses back bit for bit; the classification form is recognised; bad lines are named."""

from __future__ import annotations

import numpy as np
import pytest

from harness.exchange.vnnlib import VNNLibError, classification_label, parse_vnnlib, read_vnnlib, write_vnnlib


def test_a_written_float32_box_parses_back_to_the_same_box(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random(50).astype(np.float32)
    lo = np.clip(x - np.float32(0.1), 0, 1).astype(np.float32)
    hi = np.clip(x + np.float32(0.1), 0, 1).astype(np.float32)
    lo[0], hi[1] = np.float32(1e-38), np.nextafter(np.float32(1), np.float32(0))  # tiny and near-1 values
    write_vnnlib(tmp_path / "p.vnnlib", lo, hi, label=3, num_classes=10, comment="test\nsecond line")
    prop = read_vnnlib(tmp_path / "p.vnnlib")
    assert np.array_equal(prop.lo.astype(np.float32), lo) and np.array_equal(prop.hi.astype(np.float32), hi)
    assert np.array_equal(prop.lo, lo.astype(np.float64))  # exactly the float32 values, also in float64
    assert classification_label(prop) == 3
    assert prop.n_outputs == 10 and len(prop.clauses) == 9


HEADER = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"


def test_input_bounds_in_either_operand_order_and_other_output_forms():
    text = HEADER + "(assert (>= 0.5 X_0))\n(assert (<= 0.25 X_0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n" \
                    "(assert (<= Y_0 Y_1))\n"
    prop = parse_vnnlib(text)
    assert prop.lo.tolist() == [0.25, 0.0] and prop.hi.tolist() == [0.5, 1.0]
    assert classification_label(prop) == 0  # Y_0 <= Y_1 is "Y_1 >= Y_0": label 0 loses
    prop = parse_vnnlib(HEADER + "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (>= X_1 0))"
                                 "(assert (and (>= Y_0 0.5) (<= Y_1 2)))")
    assert classification_label(prop) is None  # a general A y <= b property: parsed, not the classification form
    a, b = prop.clauses[0]
    assert a.tolist() == [[-1.0, 0.0], [0.0, 1.0]] and b.tolist() == [-0.5, 2.0]


@pytest.mark.parametrize("body, line, words", [
    ("(assert (<= X_0 abc))", 5, "unsupported input constraint (<= X_0 abc)"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n(assert (<= Y_0 zz))", 9,
     "unsupported operand 'zz'"),
    ("(assert (<= X_0 1))\n(assert (>= X_0 0))\n(assert (<= X_1 1))\n(assert (>= X_1 0))\n(assert (foo Y_0 Y_1))", 9,
     "unsupported output constraint 'foo'"),
    ("(check-sat)", 5, "unsupported command 'check-sat'"),
    ("(assert (<= X_0 1)", 5, "unbalanced '('"),
])
def test_a_bad_line_is_named(body, line, words):
    with pytest.raises(VNNLibError) as err:
        parse_vnnlib(HEADER + body, "p.vnnlib")
    assert f"p.vnnlib:{line}:" in str(err.value) and words in str(err.value)


def test_a_missing_bound_is_named():
    with pytest.raises(VNNLibError, match="X_1 lacks a lower bound"):
        parse_vnnlib(HEADER + "(assert (<= X_0 1))(assert (>= X_0 0))(assert (<= X_1 1))(assert (<= Y_0 Y_1))")
