"""A tiny sweep end to end: paired tables, dominated areas, costs, ablations and their figures."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.config.profile import load_profile
from harness.orchestration.pipeline import reproduce
from harness.report.stats import hypervolume, t_interval

PROFILE = '''[profile]
name = "tiny-sweep"
seeds = [0, 1]

[defaults]
epochs = 1
batch_size = 64
train_subset = 256
val_size = 100
val_pgd_steps = 2
eps_ramp_length = 0.5

[methods.pgd]
attack_steps = 2

[methods.mtl_ibp]
alpha = [0.3, 0.7]

[methods.ad_cert]
alpha = [0.3, 0.7]

[ablations]
base = { alpha = 0.7 }

[[ablations.variants]]
name = "teacher sees x_adv"
params = { teacher_input = "adv" }

[[ablations.variants]]
name = "stronger teacher"
teacher = { train_eps_factor = 2.0 }

[certify]
n_test = 100
pgd_steps = 5
pgd_restarts = 1
batch_size = 100

[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["standard", "pgd", "ibp", "mtl_ibp", "ad_cert"]
'''


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    path = root / "tiny-sweep.toml"
    path.write_text(PROFILE)
    dirs = {"runs_root": root / "runs", "results_dir": root / "results", "plots_dir": root / "plots"}
    assert reproduce(path, device="cpu", executor="local", workers=2, log=lambda *_: None, **dirs) == 0
    return load_profile(path), dirs


def _read(dirs, name):
    return pd.read_csv(dirs["results_dir"] / "tiny-sweep" / f"{name}.csv", dtype={"variant": str})


def test_paired_table_is_the_seed_by_seed_difference(sweep):
    profile, dirs = sweep
    summary = _read(dirs, "summary").fillna({"variant": ""})
    paired = _read(dirs, "paired")
    assert sorted(paired["alpha"]) == [0.3, 0.7] and (paired["n_seeds"] == 2).all()
    for _, row in paired.iterrows():
        label = f"alpha={row['alpha']:g}"
        ad = summary[(summary["method"] == "ad_cert") & (summary["variant"] == label)].set_index("seed")
        mtl = summary[(summary["method"] == "mtl_ibp") & (summary["variant"] == label)].set_index("seed")
        for name, column in (("clean", "clean_acc"), ("certified", "cert_crown_ibp"), ("attack", "pgd_acc")):
            diffs = (ad[column] - mtl[column]).tolist()
            iv = t_interval(diffs)
            assert row[f"diff_{name}_mean"] == pytest.approx(iv.mean)
            if iv.sd > 0:
                assert (row[f"diff_{name}_ci_low"], row[f"diff_{name}_ci_high"]) == pytest.approx((iv.low, iv.high))
        both = ((ad["clean_acc"] > mtl["clean_acc"]) & (ad["cert_crown_ibp"] > mtl["cert_crown_ibp"])).sum()
        assert row["seeds_better_on_both"] == both
    assert (paired["attack_column"] == "pgd_acc").all()


def test_hypervolume_costs_and_ablations(sweep):
    profile, dirs = sweep
    summary = _read(dirs, "summary").fillna({"variant": ""})
    hv = _read(dirs, "hypervolume")
    assert {"ibp", "mtl_ibp", "ad_cert", "ad_cert - mtl_ibp (paired)"} == set(hv["method"])
    ref = (hv["reference_clean"].iloc[0], hv["reference_certified"].iloc[0])
    mtl0 = summary[(summary["method"] == "mtl_ibp") & (summary["seed"] == 0)]
    mtl1 = summary[(summary["method"] == "mtl_ibp") & (summary["seed"] == 1)]
    want = [hypervolume(list(zip(m["clean_acc"], m["cert_crown_ibp"])), ref) for m in (mtl0, mtl1)]
    got = hv[hv["method"] == "mtl_ibp"].iloc[0]
    assert got["hypervolume_mean"] == pytest.approx(sum(want) / 2) and got["points_per_seed"] == 2
    costs = _read(dirs, "costs").fillna({"variant": ""})
    ad = costs[(costs["method"] == "ad_cert") & (costs["variant"] == "")]
    pgd = summary[(summary["method"] == "pgd") & (summary["variant"] == "")]
    # the teacher of a seed is shared by its 4 students (2 alphas + the adv-input variant + ... ) minus the
    # one with its own stronger teacher: 2 sweep + 1 ablation = 3 students
    assert ad["teacher_share_min"].iloc[0] == pytest.approx(pgd["train_time_s"].mean() / 3 / 60)
    assert (ad["total_min"] == ad["train_min"] + ad["teacher_share_min"]).all()
    abl = _read(dirs, "ablations")
    assert sorted(abl["variant"]) == ["stronger teacher", "teacher sees x_adv"]
    assert (abl["n_seeds"] == 2).all() and (abl["base"] == "alpha=0.7").all()
    assert set(abl["sweep_best_alpha"]) <= {0.3, 0.7}
    assert all(not math.isnan(v) for v in abl["diff_certified_mean"])


def test_sweep_figures_are_written(sweep):
    _, dirs = sweep
    names = sorted(p.name for p in (dirs["plots_dir"] / "tiny-sweep").glob("*.png"))
    assert "pareto_mnist_eps0.1.png" in names and "paired_mnist_eps0.1.png" in names
    assert "tradeoff_mnist_eps0.1.png" not in names  # the Pareto figure replaces it for a sweep


def test_tables_and_figures_from_a_sweep_still_running(sweep, tmp_path):
    """Before any AD-CERT run has finished there is no pair yet: the tables and the Pareto figure are
    built from what has finished, and the paired figure waits."""
    import shutil

    from harness.report.plots import build_figures
    from harness.report.tables import build_tables

    profile, dirs = sweep
    runs = tmp_path / "runs"
    for p in profile.plan():
        if p.cfg.method != "ad_cert":
            shutil.copytree(dirs["runs_root"] / p.run_id, runs / p.run_id)
    build_tables([profile], runs_root=runs, results_dir=tmp_path / "results", log=lambda *_: None)
    written = build_figures([profile], results_dir=tmp_path / "results", plots_dir=tmp_path / "plots",
                            runs_root=runs, log=lambda *_: None)
    names = {p.name for p in written}
    assert "pareto_mnist_eps0.1.png" in names and "paired_mnist_eps0.1.png" not in names
