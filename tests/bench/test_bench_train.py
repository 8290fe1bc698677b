"""The training-step benchmark: it runs, writes its CSV atomically, and counts the arithmetic right.

Timings are not asserted (speed is measured by ``python -m harness bench train``, not tested); the
floating-point operation counts are deterministic, and they pin down the structure of the own IBP:
one product for the center and one for the radius per layer, so a bound pass costs twice a standard
step's arithmetic, and an IBP step (which also runs the clean pass whose BatchNorm statistics the
bound pass uses, gradient included) three times.
"""

from __future__ import annotations

import pandas as pd
import pytest

from harness.bench.train import VARIANTS, bench_train


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench_train.csv"
    wanted = {"standard", "ibp-ramp", "ibp", "ibp-bound-pass", "mtl_ibp-1", "ad_cert-1"}
    df = bench_train(device="cpu", repeats=1, batch=32, out=out, models=[("cnn_small", None)],
                     variants=[v for v in VARIANTS if v.label in wanted], log=lambda *_: None)
    return df, out


def test_bench_train_writes_one_row_per_variant(small_bench):
    df, out = small_bench
    on_disk = pd.read_csv(out)
    assert list(on_disk["step"]) == ["standard", "ibp-ramp", "ibp", "ibp-bound-pass", "mtl_ibp-1", "ad_cert-1"]
    assert {"median_ms", "gflop", "ratio_to_standard", "flop_ratio_to_standard", "device"} <= set(on_disk.columns)
    assert (on_disk["median_ms"] > 0).all() and (on_disk["gflop"] > 0).all()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


def test_ibp_arithmetic_is_two_products_per_layer_plus_the_clean_pass(small_bench):
    df, _ = small_bench
    flops = df.set_index("step")["flop_ratio_to_standard"]
    assert flops["ibp-bound-pass"] == pytest.approx(2.0, abs=0.05)
    assert flops["ibp"] == pytest.approx(3.0, abs=0.05)
    assert flops["ibp-ramp"] == pytest.approx(flops["ibp"], rel=1e-9)  # the regularisers add no products


def test_ad_cert_adds_one_teacher_forward_to_mtl_ibp(small_bench):
    df, _ = small_bench
    gflop = df.set_index("step")["gflop"]
    standard = gflop["standard"]  # forward + backward = 3 forwards' worth of products
    assert gflop["ad_cert-1"] - gflop["mtl_ibp-1"] == pytest.approx(standard / 3, rel=0.05)
