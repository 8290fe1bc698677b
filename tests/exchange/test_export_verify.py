"""``harness export`` then ``harness verify``: the exported files read back to the verdicts of the torch model,
and bad inputs are one-line errors that write nothing."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("onnx", reason="onnx is pinned in requirements/base.txt (make setup installs it)")
pytest.importorskip("onnxruntime", reason="onnxruntime is pinned in requirements/base.txt")

from harness.cli import main  # noqa: E402
from harness.exchange.onnx_io import OnnxRunner  # noqa: E402
from harness.exchange.vnnlib import classification_label, read_vnnlib, write_vnnlib  # noqa: E402
from harness.rundir import load_model  # noqa: E402
from harness.verification import Box, Verifier, VerifySettings  # noqa: E402


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_export_then_verify_reads_back_to_the_torch_models_verdicts(mlp_run, tmp_path, capsys):
    n = 6
    assert main(["export", str(mlp_run.path), "--n", str(n), "--out", str(tmp_path / "exports")]) == 0
    folder = tmp_path / "exports" / mlp_run.path.name
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.onnx", "instances.csv"] + [f"prop_{i}.vnnlib" for i in range(n)])
    out = tmp_path / "verified"
    assert main(["verify", "--instances", str(folder / "instances.csv"), "--out", str(out), "--no-autoattack"]) == 0
    rows = _rows(out / "results.csv")
    assert [r["vnnlib"] for r in rows] == [f"prop_{i}.vnnlib" for i in range(n)]
    assert all(r["result"] in ("sat", "unsat", "unknown", "timeout") for r in rows)
    assert any(r["result"] in ("sat", "unsat") for r in rows)

    model = load_model(mlp_run).float().eval()
    runner = OnnxRunner(folder / "model.onnx")
    verifier = Verifier(model, (1, 28, 28), VerifySettings(autoattack=False))
    for r in rows:
        prop = read_vnnlib(folder / r["vnnlib"])
        label = classification_label(prop)
        # the harness model itself on the same box: the same verdict as through ONNX
        assert verifier.verify(Box(prop.lo, prop.hi, (1, 28, 28)), label).status == r["result"]
        if r["result"] == "sat":
            text = (out / r["counterexample"]).read_text()
            values = [float(tok.rstrip(")")) for tok in text.split() if not tok.startswith("(")]
            x = np.array(values[:784], dtype=np.float32)
            assert np.all(x >= prop.lo) and np.all(x <= prop.hi)
            z = runner(x.reshape(1, 1, 28, 28))[0]
            assert np.delete(z, label).max() >= z[label]
            assert np.allclose(values[784:], z, atol=0)  # the file's outputs are onnxruntime's


def _one_line_error(capsys, argv, words, out_dir):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error:") and "\n" not in err and words in err, err
    assert not out_dir.exists()  # nothing written


def test_bad_onnx_bad_vnnlib_and_a_box_outside_the_unit_interval_are_one_line_errors(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    (tmp_path / "bad.onnx").write_bytes(helper.make_model(g).SerializeToString())
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    (tmp_path / "good.onnx").write_bytes(helper.make_model(g).SerializeToString())
    write_vnnlib(tmp_path / "ok.vnnlib", np.zeros(4), np.full(4, 0.5), 0, 2)
    text = (tmp_path / "ok.vnnlib").read_text()
    (tmp_path / "bad.vnnlib").write_text(text.replace("(assert (<= X_2 0.5))", "(assert (<= X_2 half))"))
    bad_line = text.splitlines().index("(assert (<= X_2 0.5))") + 1
    write_vnnlib(tmp_path / "out.vnnlib", np.zeros(4), np.array([0.5, 0.5, 1.5, 0.5]), 0, 2)
    out = tmp_path / "o"
    _one_line_error(capsys, ["verify", str(tmp_path / "bad.onnx"), str(tmp_path / "ok.vnnlib"), "--out", str(out)],
                    "op Tanh", out)
    _one_line_error(capsys, ["verify", str(tmp_path / "good.onnx"), str(tmp_path / "bad.vnnlib"), "--out", str(out)],
                    f"bad.vnnlib:{bad_line}:", out)
    _one_line_error(capsys, ["verify", str(tmp_path / "good.onnx"), str(tmp_path / "out.vnnlib"), "--out", str(out)],
                    "leaves [0, 1]", out)
    # the well-formed pair runs (a linear 2-class network: decided at once)
    assert main(["verify", str(tmp_path / "good.onnx"), str(tmp_path / "ok.vnnlib"), "--out", str(out)]) == 0
    assert _rows(out / "results.csv")[0]["result"] in ("sat", "unsat")


def test_linear_output_properties_with_conjunctions_are_verified_through_the_cli(tmp_path, capsys):
    """``harness verify`` on VNN-LIB properties that are not the classification form, on y = W x with
    y_0 = x_0 + x_1, y_1 = x_2 + x_3 over [0, 0.5]^4 (each in [0, 1]): single constraints and
    conjunctions, sat where the box reaches them (the counterexample confirmed by onnxruntime), unsat
    where not."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    (tmp_path / "net.onnx").write_bytes(helper.make_model(g).SerializeToString())
    write_vnnlib(tmp_path / "base.vnnlib", np.zeros(4), np.full(4, 0.5), 0, 2)
    inputs = (tmp_path / "base.vnnlib").read_text().split("(assert (or")[0]
    outputs = {"low": ("(assert (<= Y_0 0.01))", "sat"),
               "neg": ("(assert (or (<= Y_0 -0.01) (>= Y_1 1.5)))", "unsat"),
               "both": ("(assert (<= Y_0 0.01))\n(assert (>= Y_1 0.5))", "sat"),  # top-level asserts: one clause
               "never": ("(assert (or (and (<= Y_0 0.01) (>= Y_1 1.5)) (and (>= Y_0 Y_1) (>= Y_1 0.8) (<= Y_0 0.7))))",
                         "unsat")}
    for name, (text, verdict) in outputs.items():
        (tmp_path / f"{name}.vnnlib").write_text(inputs + text + "\n")
        out = tmp_path / "o" / name
        assert main(["verify", str(tmp_path / "net.onnx"), str(tmp_path / f"{name}.vnnlib"), "--out", str(out),
                     "--no-autoattack"]) == 0
        row = _rows(out / "results.csv")[0]
        assert row["result"] == verdict, (name, row)
        if verdict == "sat":
            values = [float(tok.rstrip(")")) for tok in (out / _cex_name(out)).read_text().split()
                      if not tok.startswith("(")]
            x = np.array(values[:4], dtype=np.float32)
            y = OnnxRunner(tmp_path / "net.onnx")(x.reshape(1, 4))[0]
            assert np.all(x >= 0) and np.all(x <= 0.5) and y[0] <= 0.01 and np.allclose(values[4:], y, atol=0)
            assert name == "low" or y[1] >= 0.5


def _cex_name(folder):
    return _rows(folder / "results.csv")[0]["counterexample"]


def test_export_undecided_writes_the_samples_the_certification_left_open(mlp_run, tmp_path, capsys):
    """``--undecided``: the first N samples that are correct, unbroken and uncertified in the run's records,
    named by their test index; no records, or several without a key, is a one-line error that writes nothing."""
    import shutil

    import pandas as pd

    from harness.data import load_split

    run = tmp_path / mlp_run.path.name
    shutil.copytree(mlp_run.path, run, ignore=shutil.ignore_patterns("certify-*"))
    out = tmp_path / "exports"
    _one_line_error(capsys, ["export", str(run), "--undecided", "--out", str(out)], "no certification records", out)

    _, y = load_split("mnist", "test")
    n = 20
    label = y[:n].numpy()
    idx = np.arange(n)
    records = pd.DataFrame({
        "index": idx, "label": label,
        "clean_pred": np.where(idx == 3, (label + 1) % 10, label),       # 3: misclassified
        "pgd_robust": (idx != 5).astype(int),                              # 5: broken by PGD
        "cert_ibp": (idx % 2 == 0).astype(float),                          # even: certified
        "cert_crown": np.where(idx < 10, (idx == 7).astype(float), np.nan),  # 7: certified by CROWN; past 10 not run
        "aa_robust": np.where(idx == 9, 0.0, 1.0),                         # 9: broken by AutoAttack
        "complete": ["counterexample" if i == 11 else "" for i in idx]})   # 11: a counterexample
    records.to_csv(run / "certify-aaaa.csv", index=False)
    assert main(["export", str(run), "--undecided", "--n", "3", "--out", str(out)]) == 0
    folder = out / run.name
    assert sorted(p.name for p in folder.glob("*.vnnlib")) == ["prop_1.vnnlib", "prop_13.vnnlib", "prop_15.vnnlib"]
    assert "test sample 13," in (folder / "prop_13.vnnlib").read_text()
    assert classification_label(read_vnnlib(folder / "prop_13.vnnlib")) == int(label[13])

    records.to_csv(run / "certify-bbbb.csv", index=False)
    out2 = tmp_path / "exports2"
    _one_line_error(capsys, ["export", str(run), "--undecided", "--out", str(out2)], "--certify-key", out2)
    assert main(["export", str(run), "--undecided", "--certify-key", "bbbb", "--n", "1", "--out", str(out2)]) == 0
    assert [p.name for p in (out2 / run.name).glob("*.vnnlib")] == ["prop_1.vnnlib"]
