"""A real external test: VNN-COMP 2022's mnist_fc networks and properties, against the official results.

The shipped subset (tests/data/vnncomp/SOURCE.md) is verified through the command line exactly as a
user would: every decided verdict must equal the competition's, and the subset must be decided
(each of its instances is decided within seconds here; an undecided one fails the test too).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="onnx is pinned in requirements/base.txt (make setup installs it)")
pytest.importorskip("onnxruntime", reason="onnxruntime is pinned in requirements/base.txt")

from harness.cli import main  # noqa: E402
from harness.exchange.onnx_io import OnnxRunner  # noqa: E402
from harness.exchange.vnnlib import classification_label, read_vnnlib  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "data" / "vnncomp" / "mnist_fc"


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_shipped_mnist_fc_subset_gets_the_official_verdicts(tmp_path, capsys):
    out = tmp_path / "out"
    # two instances at a time, each in its own process (the rows keep the instances' order)
    assert main(["verify", "--instances", str(BENCH / "instances.csv"), "--timeout-cap", "60", "--jobs", "2",
                 "--official", str(BENCH / "official.csv"), "--out", str(out)]) == 0
    rows = _csv(out / "results.csv")
    listed = [Path(line.split(",")[1]).name for line in (BENCH / "instances.csv").read_text().split()]
    assert [r["vnnlib"].removesuffix(".gz") for r in rows] == listed
    official = {(r["onnx"], r["vnnlib"]): r["consensus"] for r in _csv(BENCH / "official.csv")}
    assert len(rows) == 6
    decided = []
    for r in rows:
        truth = official[(r["onnx"].removesuffix(".gz"), r["vnnlib"].removesuffix(".gz"))]
        assert truth in ("sat", "unsat")
        if r["result"] in ("sat", "unsat"):
            assert r["result"] == truth, r  # never a verdict against the competition's
            decided.append(r)
        else:
            # only the MILP instance may run out of time, on a machine much slower or busier than
            # ours (it takes ~11 s of one core here); the others are decided within seconds
            assert r["vnnlib"] == "prop_14_0.05.vnnlib.gz" and r["result"] == "timeout", r
    assert len(decided) >= 5
    assert {r["stage"] for r in decided} >= {"clean", "pgd", "crown", "alpha-crown"}
    # every counterexample file holds a point of the box that onnxruntime puts on the wrong side
    runner = OnnxRunner(BENCH / "onnx" / "mnist-net_256x2.onnx.gz")
    for r in rows:
        if r["result"] != "sat":
            continue
        prop = read_vnnlib(BENCH / "vnnlib" / r["vnnlib"])
        label = classification_label(prop)
        values = [float(tok.rstrip(")")) for tok in (out / r["counterexample"]).read_text().split()
                  if not tok.startswith("(")]
        x = np.array(values[:784], dtype=np.float32)
        assert np.all(x >= prop.lo) and np.all(x <= prop.hi)
        z = runner(x.reshape(1, 784, 1))[0]
        assert np.delete(z, label).max() >= z[label]
    summary = {r["verifier"]: r for r in _csv(out / "summary.csv")}
    assert summary["harness"]["disagree"] == "0" and summary["harness"]["decided"] == str(len(decided))
    # provenance: what made the results, with no path of this machine in it
    import json

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["benchmark"] == "mnist_fc" and prov["instances"] == 6 and prov["jobs"] == 2
    assert prov["wall_time_s"] > 0 and prov["machine"]["cores"] >= 1 and prov["settings"]["time_limit_s"] > 0
    assert str(Path.home()) not in json.dumps(prov) and str(tmp_path) not in json.dumps(prov)
