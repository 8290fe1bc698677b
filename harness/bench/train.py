"""Benchmark of one training step per method (``python -m harness bench train``)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from harness.config import REPO
from harness.methods import Batch, make_method
from harness.models import build_model, frozen_batch_stats, ibp_init

# (label, method, params): the step variants the training issue names.
VARIANTS = [
    ("standard", "standard", {}),
    ("pgd-1", "pgd", {"attack_steps": 1}),
    ("pgd-10", "pgd", {"attack_steps": 10}),
    ("ibp", "ibp", {}),
    ("mtl_ibp-1", "mtl_ibp", {"attack_steps": 1}),
    ("ad_cert-1", "ad_cert", {"attack_steps": 1}),
]
MODELS = [("cnn_small", None), ("cnn7", 64)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(device: str = "auto", repeats: int = 7, batch: int = 128, out: Path | None = None,
                models=MODELS, log=print) -> pd.DataFrame:
    """Median seconds of one optimiser step (loss, backward, clip, Adam) per method and model."""
    from harness.data import get_info
    from harness.train import atomic_write_text, resolve_device

    dev = resolve_device(device)
    info = get_info("mnist")
    torch.manual_seed(0)
    x = torch.rand(batch, *info.in_shape, device=dev)
    y = torch.randint(0, info.num_classes, (batch,), device=dev)
    eps = 0.1
    rows = []
    for arch, width in models:
        teacher = build_model(arch, info.in_shape, info.num_classes, info.mean, info.std, width).to(dev).eval()
        reps = repeats if arch == "cnn_small" else max(3, repeats // 2)
        for label, name, params in VARIANTS:
            model = build_model(arch, info.in_shape, info.num_classes, info.mean, info.std, width).to(dev)
            ibp_init(model)
            method = make_method(name, params)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            model.train()
            times = []
            for i in range(reps + 1):  # first step is warm-up
                _sync(dev)
                t = time.perf_counter()
                with frozen_batch_stats(model):
                    out_ = method(Batch(model, x, y, eps * 0.5, eps, teacher))
                opt.zero_grad(set_to_none=True)
                out_.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                _sync(dev)
                if i:
                    times.append(time.perf_counter() - t)
            rows.append({"model": arch, "step": label, "batch": batch, "device": str(dev),
                         "median_ms": 1000 * statistics.median(times), "repeats": reps})
            log(f"{arch:10s} {label:10s} {rows[-1]['median_ms']:9.1f} ms")
    df = pd.DataFrame(rows)
    std = df[df["step"] == "standard"].set_index("model")["median_ms"]
    df["ratio_to_standard"] = df.apply(lambda r: r["median_ms"] / std[r["model"]], axis=1)
    for arch, _ in models:
        sub = df[df["model"] == arch].set_index("step")["median_ms"]
        log(f"{arch}: ibp/standard {sub['ibp'] / sub['standard']:.2f}x (target <= 2), "
            f"ad_cert/mtl_ibp {sub['ad_cert-1'] / sub['mtl_ibp-1']:.2f}x (target <= 1.3)")
    out = out or REPO / "results" / "bench_train.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
    log(f"wrote {out}")
    return df
