"""`reproduce`: data -> train (teachers first) -> certify -> tables -> figures, skipping what is done."""

from __future__ import annotations

import time
from pathlib import Path

from harness.certify import CertifySettings, certify_run
from harness.config import RUNS, Profile, RunConfig, load_profile
from harness.tables import build_tables
from harness.train import RunDir, train

# Relative cost of one training step, in standard forward+backward passes; used only for the
# printed estimate and ETA (each attack step costs about one forward+backward).
_BASE_COST = {"standard": 1.0, "pgd": 1.5, "ibp": 2.5, "mtl_ibp": 3.5, "cc_ibp": 3.5, "exp_ibp": 3.5, "ad_cert": 4.0}


def _step_cost(cfg: RunConfig) -> float:
    return _BASE_COST.get(cfg.method, 4.0) + float(cfg.params.get("attack_steps", 0))


def _steps(cfg: RunConfig) -> int:
    from harness.data import get_info

    n_train = get_info(cfg.dataset).train_size - cfg.val_size
    n = min(cfg.train_subset or n_train, n_train)
    return cfg.epochs * -(-n // cfg.batch_size)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _calibrate(cfg: RunConfig) -> float:
    """Seconds of one standard training step of this arch/dataset/batch on this machine (3 timed steps)."""
    import torch
    import torch.nn.functional as F

    from harness.data import get_info
    from harness.train import model_for

    info = get_info(cfg.dataset)
    model = model_for(cfg)
    opt = torch.optim.Adam(model.parameters())
    x = torch.rand(cfg.batch_size, *info.in_shape)
    y = torch.randint(0, info.num_classes, (cfg.batch_size,))
    times = []
    for _ in range(4):
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[1]


def reproduce(profile_name: str, *, device: str = "auto", runs_root: Path | None = None,
              results_dir: Path | None = None, plots_dir: Path | None = None, log=print) -> int:
    """Run a whole profile; returns 0 when every available setting finished (skips are reported)."""
    from harness.data import DatasetUnavailableError, ensure_dataset
    from harness.plots import build_figures

    runs_root = runs_root or RUNS
    profile: Profile = load_profile(profile_name)
    settings = CertifySettings.from_dict(profile.certify)
    runs = profile.runs()
    log(f"profile {profile.name}: {profile.description}")

    available, skipped = {}, {}
    for ds in dict.fromkeys(r.dataset for r in runs):
        try:
            ensure_dataset(ds)
            available[ds] = True
        except DatasetUnavailableError as e:
            skipped[ds] = str(e)
            log(f"SKIPPED {ds}: {e}")
    todo = [r for r in runs if r.dataset in available]

    pending = [r for r in todo if not RunDir.of(r, runs_root).finished]
    calib = {}
    for r in pending:
        key = (r.dataset, r.arch, r.width, r.batch_size)
        if key not in calib:
            calib[key] = _calibrate(r)
    weights = {r.run_id: _steps(r) * _step_cost(r) * calib[(r.dataset, r.arch, r.width,
               r.batch_size)] for r in pending}
    expected = sum(weights.values())
    log(f"{len(runs)} runs in the plan, {len(runs) - len(todo)} skipped (data missing), "
        f"{len(todo) - len(pending)} already trained, {len(pending)} to train; "
        f"expected training time about {_fmt(expected)} on this machine (+ certification)")
    t_start = time.perf_counter()
    done_weight = 0.0
    for i, cfg in enumerate(todo, 1):
        run = RunDir.of(cfg, runs_root)
        if not run.finished:
            log(f"[{i}/{len(todo)}] train {cfg.run_id}")
            t = time.perf_counter()
            train(cfg, device=device, runs_root=runs_root, log=log)
            done_weight += weights.get(cfg.run_id, 0.0)
            elapsed = time.perf_counter() - t_start
            remaining = max(expected - done_weight, 0.0) * (elapsed / max(done_weight, 1e-9))
            log(f"[{i}/{len(todo)}] trained in {_fmt(time.perf_counter() - t)}; elapsed {_fmt(elapsed)}, "
                f"training ETA {_fmt(remaining)}")
    for i, cfg in enumerate(todo, 1):
        run = RunDir.of(cfg, runs_root)
        t = time.perf_counter()
        df = certify_run(run, settings, device=device, log=log)
        took = time.perf_counter() - t
        if took > 1.0:
            log(f"[{i}/{len(todo)}] certified {cfg.run_id} in {_fmt(took)}: clean "
                f"{100 * (df['clean_pred'] == df['label']).mean():.1f}%, PGD {100 * df['pgd_robust'].mean():.1f}%, "
                f"IBP {100 * df['cert_ibp'].mean():.1f}%")
    build_tables([profile.name], runs_root=runs_root, results_dir=results_dir, log=log)
    build_figures(results_dir=results_dir, plots_dir=plots_dir, runs_root=runs_root, log=log)
    for ds, why in skipped.items():
        log(f"note: {ds} settings were skipped: {why.splitlines()[0]}")
    log(f"profile {profile.name} done in {_fmt(time.perf_counter() - t_start)}")
    return 0

