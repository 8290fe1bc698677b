"""Speed of the bound computations (``python -m harness bench bounds``).

Times, in one process, the median of ``repeats`` runs after one warm-up run, of: the plain forward,
the own IBP engine (:func:`harness.bounds.ibp.ibp_bounds` with the specification folded in), the own
IBP and auto_LiRPA's IBP / CROWN-IBP through the common interface
(:func:`harness.bounds.margin_lower_bounds`, so both pay the same validation and set-up), and on the
small CNN full CROWN; for ``cnn_small`` and ``cnn7`` (width 64) with random weights in eval mode on
MNIST-shaped input (1x28x28). Also the time to certify the full 10,000-image MNIST test set with the
own IBP and the small CNN (random inputs of that shape, marked in the ``note`` column, when the data
is not present).

Measurement choices:

- Methods of one group run round-robin (one call of each per round), so a slow phase of a shared
  machine hits them all alike instead of whichever happened to run then.
- Everything runs under ``torch.no_grad`` (auto_LiRPA's alpha-CROWN would switch grad on itself;
  IBP, CROWN-IBP and CROWN need none); ``torch.cuda.synchronize`` brackets every run on CUDA.
- Slow methods get fewer runs, recorded in ``repeats``: CROWN-IBP on cnn7 at most 3; full CROWN
  (cnn_small only) at most 3 runs at batch min(batch, 32), since it costs seconds per batch on a CPU.
- ``vs_forward`` and ``vs_own_ibp`` compare per-sample times (so a smaller CROWN batch still compares)
  with the forward and with ``own_ibp`` (the own IBP through the common interface, the like-for-like
  reference for the auto_LiRPA rows).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from harness.bounds import certify, margin_lower_bounds
from harness.bounds.ibp import ibp_bounds
from harness.bounds.spec import spec_matrix
from harness.config.settings import REPO
from harness.data import get_info, load_split
from harness.models import build_model
from harness.rundir import atomic_write_text
from harness.runtime.device import exact_arithmetic, resolve_device
from harness.threat_model import input_box

MODELS: list[tuple[str, int | None]] = [("cnn_small", None), ("cnn7", 64)]
EPS = 0.1
CROWN_BATCH = 32
SLOW_REPEATS = 3
CERT_BATCH = 1000
CERT_N = 10_000

# Targets of the bounds issue, checked in the printed summary.
TARGET_ENGINE_VS_FORWARD_CNN7 = 2.5
TARGET_CERT_SECONDS = 10.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _round_robin(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median milliseconds per function; one warm-up call each, then ``repeats`` interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        _sync(device)
        for _ in range(repeats):
            for name, fn in fns.items():
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(ts) for name, ts in times.items()}


def _mnist_test(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The MNIST test set if harness.data can load it, else random data of its shape (and why)."""
    try:

        x, y = load_split("mnist", "test")
        note = "real MNIST test set"
    except Exception as err:  # noqa: BLE001 - any failure (module or data missing) falls back, and says so
        gen = torch.Generator().manual_seed(0)
        info = get_info("mnist")
        x = torch.rand(CERT_N, *info.in_shape, generator=gen)
        y = torch.randint(0, info.num_classes, (CERT_N,), generator=gen)
        note = f"RANDOM inputs of the MNIST test set's shape (MNIST not loaded: {type(err).__name__}: {err})"
    return x.to(device), y.to(device), note


def bench_bounds(device: str = "auto", repeats: int = 7, batch: int = 128, out: Path | None = None,
                 log: Callable[[str], None] = print, models=None) -> pd.DataFrame:
    """Benchmark the bound methods; print a table, write it as CSV and return it.

    Args:
        device: "auto" (CUDA when available), "cpu" or "cuda".
        repeats: timed runs per method (after one warm-up); slow methods use at most 3.
        batch: batch size of the timed calls (full CROWN: at most 32).
        out: CSV path, written atomically; default ``<repo>/results/bench_bounds.csv``.
        log: where the table and the target summary go.
        models: (architecture, width) pairs; default :data:`MODELS`.

    Returns:
        One row per (model, method): model, method, batch, device, threads, repeats, median_ms,
        vs_forward, vs_own_ibp, note.
    """
    if repeats < 1 or batch < 1:
        raise ValueError(f"repeats and batch must be >= 1, got repeats={repeats}, batch={batch}")
    dev = resolve_device(device)
    with exact_arithmetic(dev):  # as certification computes: no TF32 on CUDA
        return _bench_bounds(dev, repeats, batch, out, log, models or MODELS)


def _bench_bounds(dev: torch.device, repeats: int, batch: int, out: Path | None, log: Callable[[str], None],
                  models) -> pd.DataFrame:
    info = get_info("mnist")
    threads = torch.get_num_threads()
    rows: list[dict] = []

    def add(model: str, method: str, n: int, reps: int, ms: float, note: str = "") -> None:
        rows.append({"model": model, "method": method, "batch": n, "device": str(dev), "threads": threads,
                     "repeats": reps, "median_ms": ms, "note": note})

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *info.in_shape, generator=gen).to(dev)
    y = torch.randint(0, info.num_classes, (batch,), generator=gen).to(dev)
    lo, hi = input_box(x, EPS)
    C = spec_matrix(y, info.num_classes).to(dev)
    for arch, width in models:
        torch.manual_seed(0)
        model = build_model(arch, info.in_shape, info.num_classes, info.mean, info.std, width).to(dev).eval()
        fast = {
            "forward": lambda: model(x),
            "own_ibp_engine": lambda: ibp_bounds(model, lo, hi, C),
            "own_ibp": lambda: margin_lower_bounds(model, x, y, EPS, "ibp"),
            "lirpa_ibp": lambda: margin_lower_bounds(model, x, y, EPS, "lirpa-ibp"),
        }
        for method, ms in _round_robin(fast, repeats, dev).items():
            add(arch, method, batch, repeats, ms)
        reps = repeats if arch == "cnn_small" else min(repeats, SLOW_REPEATS)
        ms = _round_robin({"crown_ibp": lambda: margin_lower_bounds(model, x, y, EPS, "crown-ibp")}, reps, dev)
        add(arch, "crown_ibp", batch, reps, ms["crown_ibp"])
        if arch == "cnn_small":
            n = min(batch, CROWN_BATCH)
            reps = min(repeats, SLOW_REPEATS)
            ms = _round_robin({"crown": lambda: margin_lower_bounds(model, x[:n], y[:n], EPS, "crown")}, reps, dev)
            add(arch, "crown", n, reps, ms["crown"], note=f"full CROWN at batch {n}, {reps} runs (seconds per call)")
            rows.append(_bench_certify(model, dev, threads, min(repeats, SLOW_REPEATS)))
        del model

    df = pd.DataFrame(rows)
    per_sample = df["median_ms"] / df["batch"]
    for ref, col in (("forward", "vs_forward"), ("own_ibp", "vs_own_ibp")):
        base = df[df["method"] == ref].set_index("model")["median_ms"] / batch
        df[col] = [ps / base[m] if not r.startswith("certify") else math.nan
                   for ps, m, r in zip(per_sample, df["model"], df["method"])]
    df = df[["model", "method", "batch", "device", "threads", "repeats", "median_ms", "vs_forward", "vs_own_ibp",
             "note"]]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        log(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    _log_targets(df, log)
    out = Path(out) if out is not None else REPO / "results" / "bench_bounds.csv"
    _write_csv_atomic(df, out)
    log(f"wrote {out}")
    return df


def _bench_certify(model: torch.nn.Module, dev: torch.device, threads: int, reps: int) -> dict:
    """Time certify(..., 'ibp') over the whole MNIST test set in batches of CERT_BATCH."""
    x, y, note = _mnist_test(dev)

    def run() -> int:
        return sum(int(certify(model, x[s:s + CERT_BATCH], y[s:s + CERT_BATCH], EPS, "ibp").certified.sum())
                   for s in range(0, len(x), CERT_BATCH))

    certified = run()  # warm-up, and the count for the note
    times = []
    for _ in range(reps):
        _sync(dev)
        start = time.perf_counter()
        run()
        _sync(dev)
        times.append(time.perf_counter() - start)
    note = f"{note}; {len(x)} images, batches of {CERT_BATCH}, eps {EPS}, {certified} certified (random weights)"
    return {"model": "cnn_small", "method": "certify_ibp_mnist_test", "batch": len(x), "device": str(dev),
            "threads": threads, "repeats": reps, "median_ms": 1000 * statistics.median(times), "note": note}


def _log_targets(df: pd.DataFrame, log: Callable[[str], None]) -> None:
    """One line per target of the bounds issue: measured value, target, met or not."""
    t = df.set_index(["model", "method"])

    def line(name: str, value: float, ok: bool, target: str) -> None:
        log(f"{name}: {value:.2f} (target {target}) {'OK' if ok else 'MISSED'}")

    if ("cnn7", "own_ibp_engine") in t.index:
        v = t.loc[("cnn7", "own_ibp_engine"), "vs_forward"]
        line("cnn7 own IBP engine / forward", v, v <= TARGET_ENGINE_VS_FORWARD_CNN7,
             f"<= {TARGET_ENGINE_VS_FORWARD_CNN7}")
    for arch in dict.fromkeys(df["model"]):
        if (arch, "lirpa_ibp") in t.index:
            v = t.loc[(arch, "lirpa_ibp"), "vs_own_ibp"]
            line(f"{arch} auto_LiRPA IBP / own IBP", v, v >= 1.0, ">= 1")
    if ("cnn_small", "certify_ibp_mnist_test") in t.index:
        seconds = t.loc[("cnn_small", "certify_ibp_mnist_test"), "median_ms"] / 1000
        line("cnn_small own-IBP certification of 10k MNIST test images, seconds", seconds,
             seconds < TARGET_CERT_SECONDS, f"< {TARGET_CERT_SECONDS:g}")


def _write_csv_atomic(df: pd.DataFrame, out: Path) -> None:
    """Write the table atomically (temporary file, then rename), creating its folder."""

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
