"""``python -m harness gpucheck``: the GPU path, checked by one command that writes one report.

Stages, in order of importance (the report is rewritten after each, so a time limit still leaves
the stages that finished):

1. ``environment``: torch, CUDA, the device, auto_LiRPA's compatibility patches.
2. ``paper-slice``: the paper profile's MNIST eps 0.1 setting (CNN7-BN, its schedule, batch size,
   alphas) cut to a few epochs and one seed, every method trained and then certified by every
   certifier (CROWN and alpha-CROWN on a few undecided samples), on the device, through
   ``reproduce``; reports each method's epoch times, validation accuracies, certification times per
   stage, batch sizes used and memory peaks, and the summary rows.
3. ``cuda-tests``: the test suite's CUDA tests (``pytest -m cuda``).
4. ``bench``: ``bench train`` and ``bench bounds`` on the device (CNN7).

``--tiny`` runs the same stages with a small model, a slice of the data and few test samples, so
the whole script can be exercised on a CPU (the test suite does). Exit status 0 only if every stage
passed.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from harness.bench.bounds import bench_bounds
from harness.bench.train import bench_train
from harness.bounds.lirpa_compat import APPLIED_PATCHES
from harness.certification.run import certify_paths
from harness.config.profile import Profile, load_profile
from harness.config.settings import REPO, CertifySettings
from harness.orchestration.pipeline import reproduce
from harness.rundir import RunDir, atomic_write_text, now, write_json
from harness.runtime.device import device_name, resolve_device

SLICE_CERTIFY = CertifySettings(n_test=1000, crown_samples=8, alpha_crown_samples=4, pgd_steps=50, pgd_restarts=1,
                                batch_size=500, crown_batch_size=8, alpha_iterations=20)
TINY_CERTIFY = CertifySettings(n_test=60, crown_samples=3, alpha_crown_samples=2, pgd_steps=5, pgd_restarts=1,
                               batch_size=60, crown_batch_size=3, alpha_iterations=3)
#: The tiny model of ``--tiny``: an MLP, so that the script's every stage runs in a minute on a CPU.
TINY_ARCH = ("mlp", 32)


def slice_profile(epochs: int, tiny: bool) -> Profile:
    """The paper profile's first setting (MNIST 0.1), one seed, ``epochs`` epochs; ``tiny``: small model."""
    paper = load_profile("paper")
    setting = paper.settings[0]
    run = {**setting.run, "epochs": epochs}
    if tiny:
        run.update({"arch": TINY_ARCH[0], "width": TINY_ARCH[1], "train_subset": 512, "val_size": 100,
                    "batch_size": 64, "val_pgd_steps": 2})
    return replace(paper, name="gpucheck", description=f"paper profile, MNIST 0.1, {epochs} epochs, seed 0"
                   + (" (tiny)" if tiny else ""), seeds=(0,), settings=(replace(setting, run=run),),
                   certify=TINY_CERTIFY if tiny else SLICE_CERTIFY)


def _stage_environment(device: str) -> dict[str, Any]:
    import torch

    dev = resolve_device(device)
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": str(dev), "device_name": device_name(dev), "lirpa_patches": list(APPLIED_PATCHES),
            "tf32_defaults": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                              "cudnn": torch.backends.cudnn.allow_tf32}}


def _stage_paper_slice(device: str, out: Path, epochs: int, tiny: bool, log) -> dict[str, Any]:
    import pandas as pd

    profile = slice_profile(epochs, tiny)
    runs = out / "runs"
    code = reproduce(profile, device=device, runs_root=runs, results_dir=out / "results", plots_dir=out / "plots",
                     log=log)
    summary = pd.read_csv(out / "results" / profile.name / "summary.csv", dtype={"variant": str})
    per_run, problems = [], []
    for p in profile.plan():
        run = RunDir.of(p.cfg, runs)
        metrics = run.read_metrics()
        meta_path = certify_paths(run, profile.certify_for(p))[1]
        cert = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        manifest = run.read_manifest()
        per_run.append({
            "method": p.cfg.method, "run_id": p.run_id,
            "epoch_time_s": [round(m["epoch_time_s"], 2) for m in metrics],
            "val_time_s": [round(m.get("val_time_s", float("nan")), 2) for m in metrics],
            "val_clean": metrics[-1]["val_clean"] if metrics else None,
            "val_pgd": metrics[-1]["val_pgd"] if metrics else None,
            "val_ibp_cert": metrics[-1]["val_ibp_cert"] if metrics else None,
            "train_peak_gib": manifest.get("peak_memory_gib"),
            "certify_times_s": {k: round(v, 2) for k, v in cert.get("times_s", {}).items()},
            "certify_batch_sizes": cert.get("batch_sizes", {}), "certify_peak_gib": cert.get("peak_memory_gib"),
            "n_crown": cert.get("n_crown"), "n_alpha_crown": cert.get("n_alpha_crown"),
        })
        for stage in ("clean", "pgd", "ibp", "lirpa-ibp", "crown-ibp"):
            if stage not in cert.get("times_s", {}):
                problems.append(f"{p.cfg.method}: certifier {stage} did not run")
    bounded = {stage: sum(1 for r in per_run if stage in r["certify_times_s"] and r[f"n_{stage.replace('-', '_')}"])
               for stage in ("crown", "alpha-crown")}
    for stage, n in bounded.items():
        if n == 0:
            problems.append(f"{stage} bounded no undecided sample in any run")
    cols = ["method", "clean_acc", "pgd_acc", "cert_ibp", "cert_crown_ibp", "cert_crown", "cert_alpha_crown",
            "n_crown", "n_alpha_crown", "train_time_s", "cert_time_s"]
    return {"exit_code": code, "runs": per_run, "runs_with_crown": bounded["crown"],
            "runs_with_alpha_crown": bounded["alpha-crown"], "summary": summary[cols].to_dict(orient="records"),
            "problems": problems, "ok": code == 0 and not problems}


#: The test files that hold CUDA tests (listed, so that a machine without the CPU-only tools, e.g. a
#: GPU node without SLURM or the MILP solver, need not import the rest of the suite).
CUDA_TEST_FILES = ("tests/runtime/test_device.py", "tests/training/test_methods.py", "tests/bounds/test_lirpa.py")


def _stage_cuda_tests(log) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *CUDA_TEST_FILES]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    tail = [ln for ln in r.stdout.splitlines() if ln.strip()][-15:]
    for ln in tail[-3:]:
        log(f"  {ln}")
    return {"exit_code": r.returncode, "tail": tail, "ok": r.returncode == 0}


def _stage_bench(device: str, out: Path, tiny: bool, log) -> dict[str, Any]:
    models = [TINY_ARCH] if tiny else [("cnn7", 64)]
    repeats = 2 if tiny else 5
    train = bench_train(device=device, repeats=repeats, out=out / "bench_train.csv", models=models, log=log)
    bounds = bench_bounds(device=device, repeats=repeats, out=out / "bench_bounds.csv", models=models, log=log)
    return {"train": train.to_dict(orient="records"), "bounds": bounds.to_dict(orient="records"), "ok": True}


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check ({report['started']})", "", f"result: {'PASS' if report['ok'] else 'FAIL'}", ""]
    for name, st in report["stages"].items():
        lines.append(f"## {name}: {'ok' if st.get('ok') else 'FAILED'} ({st.get('seconds', 0):.0f} s)")
        if "error" in st:
            lines += ["```", st["error"], "```"]
        if name == "environment":
            lines += [f"- {k}: {v}" for k, v in st.items() if k not in ("ok", "seconds")]
        if name == "paper-slice" and "runs" in st:
            lines.append("| method | epoch times (s) | val clean / PGD / IBP-cert | train peak GiB | certify times (s) "
                         "| certify peak GiB | batch sizes |")
            lines.append("|---|---|---|---|---|---|---|")
            for r in st["runs"]:
                lines.append(f"| {r['method']} | {r['epoch_time_s']} | {r['val_clean']} / {r['val_pgd']} / "
                             f"{r['val_ibp_cert']} | {r['train_peak_gib']} | {r['certify_times_s']} | "
                             f"{r['certify_peak_gib']} | {r['certify_batch_sizes']} |")
            lines += ["", "summary rows:", "```", json.dumps(st["summary"], indent=1), "```"]
            lines += [f"- problem: {p}" for p in st.get("problems", [])]
        if name == "cuda-tests":
            lines += ["```"] + st.get("tail", []) + ["```"]
        if name == "bench" and "train" in st:
            lines += ["| model | step | ms | GFLOP | x standard |", "|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['step']} | {r['median_ms']:.2f} | {r['gflop']:.1f} | "
                      f"{r['ratio_to_standard']:.2f} |" for r in st["train"]]
            lines += ["", "| model | method | batch | ms |", "|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['method']} | {r['batch']} | {r['median_ms']:.2f} |" for r in st["bounds"]]
        lines.append("")
    return "\n".join(lines)


def gpucheck(device: str = "cuda", out: Path | None = None, *, tiny: bool = False, epochs: int = 2,
             stages: tuple[str, ...] = ("environment", "paper-slice", "cuda-tests", "bench"),
             log: Callable[[str], None] = print) -> int:
    """Run the stages, write ``gpucheck.json`` and ``gpucheck.md`` to ``out``; 0 only if all passed."""

    out = out or REPO / "runs" / "gpucheck"
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": now(), "device": device, "tiny": tiny, "epochs": epochs, "stages": {},
                              "ok": True}
    steps = {"environment": lambda: _stage_environment(device),
             "paper-slice": lambda: _stage_paper_slice(device, out, epochs, tiny, log),
             "cuda-tests": lambda: _stage_cuda_tests(log),
             "bench": lambda: _stage_bench(device, out, tiny, log)}
    for name in stages:
        log(f"== gpucheck: {name}")
        t = time.perf_counter()
        try:
            result = steps[name]()
            result.setdefault("ok", True)
        except Exception as e:  # noqa: BLE001 - a failed stage is reported, and the next one still runs
            result = {"ok": False, "error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"}
        result["seconds"] = time.perf_counter() - t
        report["stages"][name] = result
        report["ok"] = report["ok"] and result["ok"]
        write_json(out / "gpucheck.json", report)
        atomic_write_text(out / "gpucheck.md", _markdown(report))
        log(f"== gpucheck: {name} {'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s")
    log(f"gpucheck {'PASSED' if report['ok'] else 'FAILED'}; report: {out / 'gpucheck.md'}")
    return 0 if report["ok"] else 1
