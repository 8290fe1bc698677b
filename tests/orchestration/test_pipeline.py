"""End to end: the smoke profile through training, certification, tables and figures."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from harness.certification.records import CERTIFIERS, InvariantError, check_invariants, col, margin_col, summarize
from harness.certification.run import certify_paths
from harness.config.profile import load_profile
from harness.orchestration.jobs import JobSpec
from harness.orchestration.pipeline import reproduce, schedule
from harness.report.tables import SUMMARY_COLUMNS, build_tables
from harness.rundir import RunDir

REQUIRED = ["dataset", "eps", "method", "arch", "seed", "profile", "n_test", "clean_acc", "pgd_acc", "cert_ibp",
            "cert_lirpa_ibp", "cert_crown_ibp", "cert_crown", "cert_alpha_crown", "n_crown", "train_time_s",
            "teacher_time_s", "cert_time_s", "run_id"]


@pytest.fixture(scope="module")
def smoke(smoke_inline):
    return smoke_inline.dirs, smoke_inline.logs, smoke_inline.seconds


def results(dirs) -> Path:
    return dirs["results_dir"] / "smoke"


def test_smoke_finishes_in_time(smoke):
    _, _, seconds = smoke
    assert seconds < 180


def test_summary_schema_and_accuracy_order(smoke):
    dirs, _, _ = smoke
    df = pd.read_csv(results(dirs) / "summary.csv")
    assert list(df.columns) == SUMMARY_COLUMNS
    assert set(REQUIRED) <= set(df.columns)
    profile = load_profile("smoke")
    assert len(df) == len(profile.runs())
    assert set(df["method"]) == set(load_profile("smoke").settings[0].methods)
    assert (df["status"] == "ok").all()
    for _, r in df.iterrows():
        assert 0 <= r["cert_ibp"] <= r["pgd_acc"] <= r["clean_acc"] <= 100
        assert r["cert_ibp"] == r["cert_lirpa_ibp"]
        assert r["cert_ibp"] <= r["cert_crown_ibp"] <= r["pgd_acc"]  # cumulative cascade
        assert r["n_test"] == 200 and 0 < r["n_crown"] <= 200 and 0 < r["n_alpha_crown"] <= r["n_crown"]
        assert r["train_time_s"] > 0 and r["cert_time_s"] > 0
    ad = df[df["method"] == "ad_cert"].iloc[0]
    assert ad["teacher_time_s"] > 0
    assert pd.isna(df[df["method"] == "standard"].iloc[0]["teacher_time_s"])  # empty, never 0
    mean = pd.read_csv(results(dirs) / "summary_mean.csv")
    assert {"clean_acc_mean", "clean_acc_std", "cert_ibp_mean", "n_seeds"} <= set(mean.columns)
    comp = pd.read_csv(results(dirs) / "paper_comparison.csv")
    assert {"published_clean_acc", "published_cert_acc", "published_source", "cert_acc_mean"} <= set(comp.columns)
    for name in ("summary", "summary_mean", "paper_comparison"):
        md = (results(dirs) / f"{name}.md").read_text()
        assert md.startswith("| ") and md.count("\n") == len(pd.read_csv(results(dirs) / f"{name}.csv")) + 2


def test_per_sample_records_hold_the_invariants(smoke):
    dirs, _, _ = smoke
    import json

    for cfg in load_profile("smoke").runs():
        run = RunDir.of(cfg, dirs["runs_root"])
        csv_path, meta_path = certify_paths(run, load_profile("smoke").certify)
        df = pd.read_csv(csv_path)
        meta = json.loads(meta_path.read_text())
        assert len(df) == 200
        check_invariants(df)
        for c in CERTIFIERS:
            assert col(c) in df
        # CROWN and alpha-CROWN verdicts exist exactly on the prefixes their budgets covered, and they
        # bounded at most their budget of undecided samples there
        for c, budget in (("crown", 20), ("alpha-crown", 4)):
            covered = meta[f"n_{c.replace('-', '_')}"]
            assert df[col(c)].notna().sum() == covered
            assert df[margin_col(c)].notna().sum() <= budget
            if covered < 200:  # the budget ran out: exactly that many undecided samples were bounded
                assert df[margin_col(c)].notna().sum() == budget


def test_figures_are_written(smoke):
    dirs, _, _ = smoke
    names = sorted(p.name for p in (dirs["plots_dir"] / "smoke").glob("*.png"))
    assert names == ["cert_vs_eps_mnist_eps0.1.png", "gap_mnist_eps0.1.png", "tradeoff_mnist_eps0.1.png",
                     "training_curves_mnist_eps0.1.png"]
    for p in (dirs["plots_dir"] / "smoke").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_second_reproduce_does_no_work(smoke):
    dirs, _, _ = smoke
    run = RunDir.of(load_profile("smoke").runs()[0], dirs["runs_root"])
    records = certify_paths(run, load_profile("smoke").certify)[0]
    stamp = (run.checkpoint.stat().st_mtime_ns, records.stat().st_mtime_ns)
    logs: list[str] = []
    t = time.perf_counter()
    reproduce("smoke", device="cpu", log=logs.append, **dirs)
    assert time.perf_counter() - t < 30
    n = len(load_profile("smoke").plan())
    assert any(f"{n} done, 0 to train, 0 to certify" in line for line in logs)
    assert (run.checkpoint.stat().st_mtime_ns, records.stat().st_mtime_ns) == stamp


def _records(**cols) -> pd.DataFrame:
    base = {"index": [0, 1], "label": [3, 4], "clean_pred": [3, 4], "pgd_robust": [True, True],
            "cert_ibp": [1.0, 0.0], "cert_lirpa_ibp": [1.0, 0.0]}
    base.update(cols)
    return pd.DataFrame(base)


@pytest.mark.parametrize("cols, message", [
    ({"pgd_robust": [False, True]}, "an attack or a counterexample breaks"),
    ({"clean_pred": [2, 4]}, "misclassified"),
    ({"cert_lirpa_ibp": [0.0, 0.0]}, "disagree"),
])
def test_invariant_violations_are_fatal(cols, message):
    check_invariants(_records())
    with pytest.raises(InvariantError, match=message):
        check_invariants(_records(**cols))


def test_certifier_not_run_is_empty_not_zero():
    s = summarize(_records(cert_crown=[float("nan")] * 2, cert_alpha_crown=[float("nan")] * 2,
                           cert_crown_ibp=[1.0, 0.0]))
    assert s["cert_ibp"] == 50.0 and pd.isna(s["cert_crown"]) and pd.isna(s["cert_alpha_crown"])


def test_robust_bounds_cover_the_whole_test_set_past_every_budget():
    # four samples: certified by IBP; certified by the MILP (its budget reached it); undecided past the
    # MILP's budget; broken by AutoAttack
    s = summarize(pd.DataFrame({
        "index": [0, 1, 2, 3], "label": [1] * 4, "clean_pred": [1] * 4, "pgd_robust": [True] * 4,
        "cert_ibp": [1.0, 0.0, 0.0, 0.0], "cert_lirpa_ibp": [1.0, 0.0, 0.0, 0.0],
        "cert_complete": [1.0, 1.0, float("nan"), float("nan")], "aa_robust": [1.0, 1.0, 1.0, 0.0],
        "complete": [None, "verified", None, None]}))
    assert s["cert_complete"] == 100.0  # a budgeted stage's own column: over the prefix it covered
    assert (s["robust_lower"], s["robust_upper"], s["unknown"]) == (50.0, 75.0, 25.0)  # over all four


def test_tables_rebuild_from_records_only(smoke, tmp_path):
    dirs, _, _ = smoke
    build_tables(["smoke"], runs_root=dirs["runs_root"], results_dir=tmp_path, log=lambda *_: None)
    for name in ("summary.csv", "summary_mean.csv", "paper_comparison.csv", "summary.md"):
        assert (tmp_path / "smoke" / name).read_text() == (results(dirs) / name).read_text()


def test_missing_dataset_is_reported_as_skipped_without_a_path_of_this_machine(tmp_path, monkeypatch):
    from harness.report import tables

    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "nowhere"))
    rows = tables.profile_rows(load_profile("cpu"), runs_root=tmp_path)
    cifar = [r for r in rows if r["dataset"] == "cifar10"]
    assert cifar and all(r["status"].startswith("skipped: cifar10 data not available") for r in cifar)
    text = pd.DataFrame(rows).to_csv()
    assert str(tmp_path) not in text and str(Path(__file__).resolve().parents[2]) not in text


def _cli(*args: str):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=repo, capture_output=True, text=True)


def test_cli_stages_run_from_stored_records(smoke, tmp_path):
    dirs, _, _ = smoke
    runs, res, plots = str(dirs["runs_root"]), str(tmp_path / "results"), str(tmp_path / "plots")
    r = _cli("train", "--profile", "smoke", "--runs", runs, "--device", "cpu")
    assert r.returncode == 0 and "finished earlier" in r.stdout + r.stderr
    run_id = load_profile("smoke").runs()[2].run_id
    r = _cli("certify", run_id, "--profile", "smoke", "--runs", runs, "--device", "cpu")
    assert r.returncode == 0 and '"clean_acc"' in r.stdout
    r = _cli("tables", "--profile", "smoke", "--runs", runs, "--results", res)
    assert r.returncode == 0 and (tmp_path / "results" / "smoke" / "summary.csv").exists()
    r = _cli("figures", "--runs", runs, "--results", res, "--plots", plots)
    assert r.returncode == 0 and len(list((tmp_path / "plots" / "smoke").glob("*.png"))) == 4
    r = _cli("reproduce", "--profile", "smoke", "--runs", runs, "--results", res, "--plots", plots, "--device", "cpu")
    assert r.returncode == 0 and "0 to train" in r.stdout
    r = _cli("status", "--profile", "smoke", "--runs", runs)
    assert r.returncode == 0 and r.stdout.strip().endswith(f"{len(load_profile('smoke').plan())} certified")
    r = _cli("certify", "no-such-run", "--runs", runs)
    assert r.returncode != 0 and "no run 'no-such-run'" in r.stderr
    r = _cli("reproduce", "--profile", "nope")
    assert r.returncode != 0 and "no profile 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_status_says_which_runs_lack_their_data(tmp_path, monkeypatch, capsys):
    from harness.orchestration.status import print_status

    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "nowhere"))
    assert print_status("cpu", runs_root=tmp_path / "runs") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    n = len(load_profile("cpu").plan())
    assert lines[-1] == f"{n} skipped"
    assert all(ln.startswith("skipped") and "python -m harness data --dataset" in ln for ln in lines[:-1])


def test_a_settings_own_certification_values_are_applied_and_tabled(smoke, tmp_path):
    """A setting's ``certify`` table over ``[certify]``: its runs are certified (again, no training)
    with the merged values, into their own records, and the tables point at those."""
    import shutil

    from harness.config.settings import BENCHMARKS

    dirs, _, _ = smoke
    runs = tmp_path / "runs"
    shutil.copytree(dirs["runs_root"], runs)
    path = tmp_path / "smoke-own.toml"
    text = (BENCHMARKS / "smoke.toml").read_text().replace('name = "smoke"', 'name = "smoke-own"')
    path.write_text(text + 'certify = { n_test = 60, crown_samples = 0, alpha_crown_samples = 0 }\n')
    profile = load_profile(path)
    own = profile.certify_for(profile.settings[0])
    assert (own.n_test, own.crown_samples, own.pgd_steps) == (60, 0, 10)
    logs: list[str] = []
    assert reproduce(path, device="cpu", threads=1, runs_root=runs, results_dir=tmp_path / "results",
                     plots_dir=tmp_path / "plots", log=logs.append) == 0
    assert any(f"0 to train, {len(profile.plan())} to certify" in line for line in logs), logs[:3]
    summary = pd.read_csv(tmp_path / "results" / "smoke-own" / "summary.csv")
    assert set(summary["certify_key"]) == {own.key} != {load_profile("smoke").certify.key}
    assert set(summary["n_test"]) == {60} and set(summary["n_crown"]) == {0}
    for p in profile.plan():
        assert certify_paths(RunDir.of(p.cfg, runs), own)[0].exists()


def test_schedule_starts_teachers_then_the_longest_and_never_a_student_first():
    def spec(rid, teacher=None):
        return JobSpec(run_id=rid, config={}, certify=None, runs_root="runs", teacher=teacher)

    specs = [spec("std"), spec("ibp"), spec("pgd"), spec("student", "pgd"), spec("big-teacher", "pgd"),
             spec("student2", "big-teacher")]
    expected = {"std": 30, "ibp": 100, "pgd": 200, "student": 400, "big-teacher": 500, "student2": 600}
    order = [s.run_id for s in schedule(specs, expected)]
    assert order == ["pgd", "big-teacher", "student2", "student", "ibp", "std"]
    assert [s.run_id for s in schedule(specs, {})][:2] == ["pgd", "big-teacher"]
