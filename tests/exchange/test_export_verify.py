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
