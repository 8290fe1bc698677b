"""The tables and figures of the distillation comparison on synthetic summary rows: the clean drop
against the standard run of the same seed, AD-CERT minus CC-DIST per alpha, every method's
hypervolume, and the Pareto figure with every method."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.config.profile import load_profile
from harness.report.clean_drop import add_clean_drop, clean_drop_means, within_limit
from harness.report.stats import hypervolume, paired_difference, paired_p_value, pairs_needed
from harness.report.tables import SUMMARY_COLUMNS, profile_tables
from harness.report.tradeoff import run_items

PROFILE = '''[profile]
name = "synthetic-distill"
seeds = [0, 1, 2]

[methods.mtl_ibp]
alpha = [0.3, 0.7]

[methods.ad_cert]
alpha = [0.3, 0.7]

[methods.cc_dist]
alpha = [0.3, 0.7]

[methods.sabr]
box_ratio = [0.2, 0.6]

[[settings]]
dataset = "mnist"
eps = 0.1
methods = ["standard", "pgd", "ibp", "crown_ibp", "sabr", "mtl_ibp", "ad_cert", "cc_dist"]
'''

BASE = {"standard": (99.0, 0.0), "pgd": (98.0, 0.0), "ibp": (90.0, 60.0), "crown_ibp": (91.0, 58.0),
        "sabr": (94.0, 50.0), "mtl_ibp": (95.0, 55.0), "ad_cert": (96.0, 55.5), "cc_dist": (94.5, 54.0)}


def _numbers(method: str, knob: float, seed: int) -> tuple[float, float]:
    """(clean, certified) of a synthetic run: a method's base, a trade-off along its parameter, seed noise."""
    clean, cert = BASE[method]
    if not math.isnan(knob):
        clean, cert = clean - 5 * knob, cert + 10 * knob
    return clean + 0.3 * seed + (0.1 * seed * seed if method == "cc_dist" else 0.0), cert - 0.2 * seed


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "synthetic-distill.toml"
    path.write_text(PROFILE)
    profile = load_profile(path)
    rows = []
    for p in profile.plan():
        sweep = dict(p.sweep)
        knob = sweep.get("alpha", sweep.get("box_ratio", math.nan))
        clean, cert = _numbers(p.cfg.method, knob, p.cfg.seed)
        rows.append({"profile": profile.name, "dataset": "mnist", "eps": 0.1, "eps_label": "0.1",
                     "method": p.cfg.method, "variant": p.variant, "arch": p.cfg.arch, "seed": p.cfg.seed,
                     "status": "ok", "n_test": 100, "clean_acc": clean, "pgd_acc": clean - 1, "cert_ibp": cert,
                     "cert_crown_ibp": cert, "train_time_s": 60.0, "run_id": p.run_id, "epochs": 1})
    # one seed's standard run is missing: that seed's clean drops are NaN
    rows = [r for r in rows if not (r["method"] == "standard" and r["seed"] == 2)]
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return profile, summary, profile_tables(profile, summary)


def test_clean_drop_is_the_standard_run_of_the_same_seed_minus_the_run(synthetic):
    _, _, tables = synthetic
    s = tables["summary"]
    assert list(s.columns) == SUMMARY_COLUMNS
    for _, r in s.iterrows():
        if r["seed"] == 2:
            assert math.isnan(r["clean_drop"])
        else:
            assert r["clean_drop"] == pytest.approx(_numbers("standard", math.nan, r["seed"])[0] - r["clean_acc"])
    assert (s.loc[s["method"] == "standard", "clean_drop"].dropna() == 0).all()


def test_summary_mean_gives_the_clean_drops_mean_and_t_interval(synthetic):
    _, _, tables = synthetic
    mean = tables["summary_mean"]
    row = mean[(mean["method"] == "ad_cert") & (mean["variant"] == "alpha=0.3")].iloc[0]
    drops = [_numbers("standard", math.nan, s)[0] - _numbers("ad_cert", 0.3, s)[0] for s in (0, 1)]
    assert row["clean_drop_n"] == 2 and row["n_seeds"] == 3
    assert row["clean_drop_mean"] == pytest.approx(sum(drops) / 2)
    # the synthetic drops of AD-CERT are the same for both seeds: a zero-width interval
    assert row["clean_drop_ci_low"] == pytest.approx(row["clean_drop_mean"])
    noisy = mean[(mean["method"] == "cc_dist") & (mean["variant"] == "alpha=0.7")].iloc[0]
    assert noisy["clean_drop_ci_low"] < noisy["clean_drop_mean"] < noisy["clean_drop_ci_high"]


def test_clean_drop_of_rows_without_a_standard_run_is_nan():
    df = pd.DataFrame({"profile": ["p"] * 2, "dataset": ["mnist"] * 2, "eps": [0.1] * 2, "arch": ["a"] * 2,
                       "seed": [0, 0], "method": ["ibp", "pgd"], "variant": ["", ""], "status": ["ok"] * 2,
                       "clean_acc": [90.0, 95.0]})
    out = add_clean_drop(df)
    assert out["clean_drop"].isna().all()
    means = clean_drop_means(out, ["method"])
    assert means["clean_drop_n"].tolist() == [0, 0] and means["clean_drop_mean"].isna().all()


def test_ad_cert_minus_cc_dist_per_alpha(synthetic):
    profile, summary, tables = synthetic
    paired = tables["paired_cc_dist"]
    assert sorted(paired["alpha"]) == [0.3, 0.7] and (paired["comparison"] == "ad_cert - cc_dist").all()
    assert (tables["paired"]["comparison"] == "ad_cert - mtl_ibp").all()
    for _, row in paired.iterrows():
        a = [_numbers("ad_cert", row["alpha"], s)[0] for s in (0, 1, 2)]
        b = [_numbers("cc_dist", row["alpha"], s)[0] for s in (0, 1, 2)]
        iv = paired_difference(a, b)
        assert (row["diff_clean_mean"], row["diff_clean_ci_low"], row["diff_clean_ci_high"]) == pytest.approx(
            (iv.mean, iv.low, iv.high))
        assert row["p_clean"] == pytest.approx(paired_p_value(a, b))
        assert row["seeds_for_0.3_clean"] == pairs_needed(0.3, iv.sd)
        assert row["n_seeds"] == 3 and row["seeds_better_on_both"] == 3  # AD-CERT higher on both axes


def test_every_method_has_a_hypervolume_and_each_comparison_a_paired_one(synthetic):
    profile, summary, tables = synthetic
    hv = tables["hypervolume"]
    assert set(hv["method"]) == {"ibp", "crown_ibp", "sabr", "mtl_ibp", "ad_cert", "cc_dist",
                                 "ad_cert - mtl_ibp (paired)", "ad_cert - cc_dist (paired)"}
    ref = (hv["reference_clean"].iloc[0], hv["reference_certified"].iloc[0])
    items = run_items(profile, tables["summary"])
    sabr = [[(float(it["row"]["clean_acc"]), float(it["row"]["cert_crown_ibp"])) for it in items
             if it["method"] == "sabr" and it["seed"] == s] for s in (0, 1, 2)]
    got = hv[hv["method"] == "sabr"].iloc[0]
    assert got["points_per_seed"] == 2
    assert got["hypervolume_mean"] == pytest.approx(sum(hypervolume(p, ref) for p in sabr) / 3)


def test_pareto_figure_shows_every_method_in_panels(synthetic, tmp_path):
    from harness.report.plots.sweeps import PANELS, paired_plot, pareto_plot
    from harness.report.tables import PUBLISHED

    profile, _, tables = synthetic
    items = run_items(profile, tables["summary"])
    path = tmp_path / "pareto.png"
    pareto_plot(items, tables["costs"], pd.read_csv(PUBLISHED), "mnist eps 0.1", "mnist", "0.1", path)
    assert path.stat().st_size > 10_000
    shown = {m for panel in PANELS for m in panel}
    assert {"ibp", "crown_ibp", "sabr", "mtl_ibp", "ad_cert", "cc_dist"} <= shown
    paired_plot(tables["paired_cc_dist"], "mnist eps 0.1", tmp_path / "paired_cc_dist.png")
    assert (tmp_path / "paired_cc_dist.png").exists()


def test_a_profile_without_sweeps_gets_its_paired_tables_and_no_curve_tables(tmp_path):
    """The cpu and distill profiles have one alpha: AD-CERT is still paired by seed with MTL-IBP and CC-DIST
    (the paper's comparison), per setting, and there are no curves to take areas of."""
    path = tmp_path / "one-alpha.toml"
    path.write_text(PROFILE.replace('alpha = [0.3, 0.7]', 'alpha = 0.5').replace('box_ratio = [0.2, 0.6]',
                                                                                 'box_ratio = 0.4')
                    .replace('synthetic-distill', 'one-alpha'))
    profile = load_profile(path)
    rows = []
    for p in profile.plan():
        clean, cert = _numbers(p.cfg.method, math.nan, p.cfg.seed)
        rows.append({"profile": profile.name, "dataset": "mnist", "eps": 0.1, "eps_label": "0.1",
                     "method": p.cfg.method, "variant": p.variant, "arch": p.cfg.arch, "seed": p.cfg.seed,
                     "status": "ok", "n_test": 100, "clean_acc": clean, "pgd_acc": clean - 1, "cert_ibp": cert,
                     "cert_crown_ibp": cert, "train_time_s": 60.0, "run_id": p.run_id, "epochs": 1})
    tables = profile_tables(profile, pd.DataFrame(rows, columns=SUMMARY_COLUMNS))
    assert {"paired", "paired_cc_dist"} <= set(tables) and not {"hypervolume", "costs"} & set(tables)
    row = tables["paired_cc_dist"].iloc[0]
    a = [_numbers("ad_cert", math.nan, s)[1] for s in (0, 1, 2)]
    b = [_numbers("cc_dist", math.nan, s)[1] for s in (0, 1, 2)]
    assert row["alpha"] == 0.5 and row["n_seeds"] == 3
    assert row["diff_certified_mean"] == pytest.approx(paired_difference(a, b).mean)
    # without CC-DIST runs there is nothing to pair it with
    no_cc = profile_tables(profile, pd.DataFrame([r for r in rows if r["method"] != "cc_dist"], columns=SUMMARY_COLUMNS))
    assert "paired" in no_cc and "paired_cc_dist" not in no_cc


def test_a_sweep_without_mtl_ibp_gets_no_empty_mtl_ibp_table(tmp_path):
    """The distill profile sweeps alpha for AD-CERT and CC-DIST only: its curves and the CC-DIST pairs per
    alpha, and no AD-CERT - MTL-IBP table (an empty one would be written as a header-only CSV)."""
    path = tmp_path / "no-mtl.toml"
    path.write_text(PROFILE.replace('synthetic-distill', 'no-mtl'))
    profile = load_profile(path)
    rows = []
    for p in profile.plan():
        if p.cfg.method == "mtl_ibp":
            continue
        clean, cert = _numbers(p.cfg.method, p.cfg.params.get("alpha", math.nan), p.cfg.seed)
        rows.append({"profile": profile.name, "dataset": "mnist", "eps": 0.1, "eps_label": "0.1",
                     "method": p.cfg.method, "variant": p.variant, "arch": p.cfg.arch, "seed": p.cfg.seed,
                     "status": "ok", "n_test": 100, "clean_acc": clean, "pgd_acc": clean - 1, "cert_ibp": cert,
                     "cert_crown_ibp": cert, "train_time_s": 60.0, "run_id": p.run_id, "epochs": 1})
    tables = profile_tables(profile, pd.DataFrame(rows, columns=SUMMARY_COLUMNS))
    assert "paired" not in tables and {"paired_cc_dist", "hypervolume", "costs"} <= set(tables)
    assert sorted(tables["paired_cc_dist"]["alpha"]) == [0.3, 0.7]


def test_the_five_point_test_needs_the_whole_interval_on_one_side():
    assert within_limit(1.0, 0.5, 1.5) == "yes"
    assert within_limit(6.0, 5.5, 6.5) == "no"
    assert within_limit(4.0, 2.0, 6.0) == "not resolved"   # straddles 5
    assert within_limit(1.0, math.nan, math.nan) == "not resolved"  # one seed: no interval
    assert within_limit(5.0, 4.9, 5.0) == "not resolved"   # not below the limit
