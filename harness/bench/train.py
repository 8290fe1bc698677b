"""Speed of one training step per method (``python -m harness bench train``).

Times, in one process on the chosen device, one full optimiser step (the method's loss inside
``frozen_batch_stats``, backward, gradient clipping, Adam) at batch 128 on MNIST-shaped input, for the
small CNN and CNN7 (width 64) with Shi et al.'s IBP initialisation, and counts the floating-point
operations of the same step (forward and backward matrix products and convolutions, by torch's own
``flop_registry``), so that a time ratio can be read against the arithmetic the step must do.

Rows (``step``):

- ``standard``, ``pgd-1``, ``pgd-10``: the baselines (the attack steps in the label);
- ``ibp-ramp``: an IBP step during the eps ramp (eps at half its final value, so Shi et al.'s
  warm-up regularisers are on); ``ibp``: after the ramp (eps final, regularisers faded out), which is
  most of a run's steps;
- ``ibp-bound-pass``: the own IBP bound pass and its backward alone, BatchNorm with constant statistics
  (eval mode): the part of an IBP step that is interval arithmetic. An IBP step adds
  the clean forward and its backward (the bound pass uses the clean batch's statistics and its gradient
  flows back through them, as with auto_LiRPA's training-mode BatchNorm), hence about 3x a standard
  step's arithmetic;
- ``mtl_ibp-1``, ``ad_cert-1``: one-step attacks, during the ramp (regularisers on in both).

Each step runs as training runs it: on CUDA with TF32 and channels-last tensors
(:func:`harness.runtime.device.training_arithmetic`, :func:`harness.training.loop.prepare_model`); on the CPU in
plain float32. Measurement choices: variants of one model run round-robin (one step of each per round, after one
warm-up step each) so a slow phase of a shared machine hits them alike; ``torch.cuda.synchronize``
brackets every step on CUDA; ``repeats`` rounds for CNN7, three times as many for the (cheap, and
relatively noisier) small models.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from harness.bounds.ibp import ibp_bounds
from harness.bounds.spec import spec_matrix
from harness.config.settings import REPO
from harness.data import get_info
from harness.models import build_model, frozen_batch_stats, ibp_init
from harness.report.markdown import markdown_table
from harness.rundir import atomic_write_text
from harness.runtime.device import resolve_device, training_arithmetic
from harness.threat_model import input_box
from harness.training.loop import prepare_model
from harness.training.methods import Batch, make_method, robust_ce_from_margins

EPS = 0.1
MODELS = [("cnn_small", None), ("cnn7", 64)]

# Targets of the training issue, checked in the printed summary.
TARGET_IBP_VS_STANDARD = 2.0
TARGET_ADCERT_VS_MTLIBP = 1.3


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    params: dict[str, Any]
    eps_fraction: float  # current eps / final eps (< 1: inside the ramp)
    bound_pass_only: bool = False  # time the IBP bound pass alone (_bound_pass_loss), not the method


VARIANTS = [
    Variant("standard", "standard", {}, 1.0),
    Variant("pgd-1", "pgd", {"attack_steps": 1}, 1.0),
    Variant("pgd-10", "pgd", {"attack_steps": 10}, 1.0),
    Variant("ibp-ramp", "ibp", {}, 0.5),
    Variant("ibp", "ibp", {}, 1.0),
    Variant("ibp-bound-pass", "ibp", {}, 1.0, bound_pass_only=True),
    Variant("mtl_ibp-1", "mtl_ibp", {"attack_steps": 1}, 0.5),
    Variant("ad_cert-1", "ad_cert", {"attack_steps": 1}, 0.5),
]


class _Flops(TorchDispatchMode):
    """Counts the floating-point operations of matrix products and convolutions (torch's registry).

    torch's own ``FlopCounterMode`` tracks modules with backward hooks, which break the
    ``torch.autograd.grad`` call inside the PGD attack; this counts the same registry without them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bound_pass_loss(model, x, y, eps, num_classes):
    """IBP loss of a bound pass alone: in eval mode, BatchNorm is the same affine map with constant
    (running) statistics, so this is the interval arithmetic of a training step without its clean pass."""
    lo, hi = input_box(x, eps)
    C = spec_matrix(y, num_classes, dtype=x.dtype)
    return robust_ce_from_margins(ibp_bounds(model.eval(), lo, hi, C).lower)


class _Step:
    """One variant's model, method and optimiser; ``__call__`` runs one optimiser step."""

    def __init__(self, v: Variant, arch: str, width: int | None, info, x, y, teacher) -> None:
        self.v, self.x, self.y, self.teacher, self.num_classes = v, x, y, teacher, info.num_classes
        self.model = build_model(arch, info.in_shape, info.num_classes, info.mean, info.std, width)
        ibp_init(self.model)
        self.model = prepare_model(self.model, x.device)  # as training lays it out (channels-last on CUDA)
        self.model.train()
        self.method = make_method(v.method, v.params)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)

    def __call__(self) -> None:
        with training_arithmetic(self.x.device):  # as training computes (TF32 on CUDA; the CPU unchanged)
            self._step()

    def _step(self) -> None:
        if self.v.bound_pass_only:
            loss = _bound_pass_loss(self.model, self.x, self.y, EPS * self.v.eps_fraction, self.num_classes)
            self.model.train()
        else:
            with frozen_batch_stats(self.model):
                loss = self.method(Batch(self.model, self.x, self.y, EPS * self.v.eps_fraction, EPS,
                                         self.teacher)).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.opt.step()


def bench_train(device: str = "auto", repeats: int = 7, batch: int = 128, out: Path | None = None,
                models=MODELS, variants=VARIANTS, log=print) -> pd.DataFrame:
    """Median milliseconds and GFLOPs of one optimiser step per method and model; writes a CSV."""

    dev = resolve_device(device)
    info = get_info("mnist")
    torch.manual_seed(0)
    x = torch.rand(batch, *info.in_shape, device=dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, info.num_classes, (batch,), device=dev)
    rows = []
    for arch, width in models:
        teacher = prepare_model(build_model(arch, info.in_shape, info.num_classes, info.mean, info.std, width),
                                dev).eval()
        steps = [_Step(v, arch, width, info, x, y, teacher) for v in variants]
        flops = []
        for step in steps:
            counter = _Flops()
            with counter:  # also the warm-up step
                step()
            flops.append(counter.total)
        rounds = repeats if arch == "cnn7" else 3 * repeats  # small-model steps are cheap and noisier
        times: list[list[float]] = [[] for _ in steps]
        for _ in range(rounds):
            for k, step in enumerate(steps):
                _sync(dev)
                t = time.perf_counter()
                step()
                _sync(dev)
                times[k].append(time.perf_counter() - t)
        for v, ts, f in zip(variants, times, flops):
            rows.append({"model": arch, "step": v.label, "batch": batch, "device": str(dev),
                         "median_ms": 1000 * statistics.median(ts), "gflop": f / 1e9, "repeats": rounds})
            log(f"{arch:10s} {v.label:15s} {rows[-1]['median_ms']:9.1f} ms {f / 1e9:8.2f} GFLOP")
    df = pd.DataFrame(rows)
    std = df[df["step"] == "standard"].set_index("model")
    df["ratio_to_standard"] = df.apply(lambda r: r["median_ms"] / std.loc[r["model"], "median_ms"], axis=1)
    df["flop_ratio_to_standard"] = df.apply(lambda r: r["gflop"] / std.loc[r["model"], "gflop"], axis=1)
    for arch, _ in models:
        sub = df[df["model"] == arch].set_index("step")
        r, fr = sub["ratio_to_standard"], sub["flop_ratio_to_standard"]
        if {"ibp", "ibp-ramp", "ibp-bound-pass"} <= set(sub.index):
            log(f"{arch}: ibp/standard {r['ibp']:.2f}x after the ramp, {r['ibp-ramp']:.2f}x during it "
                f"(target <= {TARGET_IBP_VS_STANDARD}; arithmetic {fr['ibp']:.2f}x; the bound pass alone "
                f"{r['ibp-bound-pass']:.2f}x, arithmetic {fr['ibp-bound-pass']:.2f}x)")
        if {"ad_cert-1", "mtl_ibp-1"} <= set(sub.index):
            log(f"{arch}: ad_cert/mtl_ibp {sub.loc['ad_cert-1', 'median_ms'] / sub.loc['mtl_ibp-1', 'median_ms']:.2f}x "
                f"(target <= {TARGET_ADCERT_VS_MTLIBP})")
    out = out or REPO / "results" / "bench_train.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
    log(f"wrote {out}")
    return df


README_BEGIN = "<!-- speed table: generated by harness.bench.train.readme_speed_table from results/bench_train.csv -->"
README_END = "<!-- end of speed table -->"


def readme_speed_table(df: pd.DataFrame) -> str:
    """The README's table of step costs (``tests/test_readme.py`` checks the README shows exactly this).

    Per model: the time relative to a standard step (the standard step itself in ms) and the same
    ratio of arithmetic (GFLOP); the last row compares AD-CERT with MTL-IBP instead.
    """
    def at(model: str, step: str, column: str) -> float:
        return float(df[(df["model"] == model) & (df["step"] == step)][column].iloc[0])

    def cells(step: str, base: str = "standard") -> list[str]:
        out = []
        for m in ("cnn_small", "cnn7"):
            out += [f"{at(m, step, 'median_ms') / at(m, base, 'median_ms'):.2f}x",
                    f"{at(m, step, 'gflop') / at(m, base, 'gflop'):.2f}x"]
        return out

    rows = [
        ["standard", f"{at('cnn_small', 'standard', 'median_ms'):.1f} ms",
         f"{at('cnn_small', 'standard', 'gflop'):.2f} GFLOP", f"{at('cnn7', 'standard', 'median_ms'):.0f} ms",
         f"{at('cnn7', 'standard', 'gflop'):.1f} GFLOP"],
        ["IBP bound pass alone (+ backward)", *cells("ibp-bound-pass")],
        ["IBP, after the eps ramp", *cells("ibp")],
        ["IBP, during the ramp (Shi et al.'s regularisers on)", *cells("ibp-ramp")],
        ["PGD-AT, 10 steps", *cells("pgd-10")],
        ["AD-CERT / MTL-IBP (1-step attack)", *cells("ad_cert-1", "mtl_ibp-1")],
    ]

    head = ["step", "small CNN: time", "arithmetic", "CNN7 (width 64): time", "arithmetic"]
    return markdown_table(pd.DataFrame(rows, columns=head))
