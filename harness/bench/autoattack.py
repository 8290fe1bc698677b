"""Cost and strength of AutoAttack (standard version) on the small CNN, MNIST
(``python -m harness.bench.autoattack``).

Trains, on real MNIST and seeded, a standard small CNN and one PGD-trained small CNN per eps (PGD-5
with random start, eps ramped over the first third), then for each eps runs on the first ``n`` test
images: PGD-50 with 1 restart (``pgd_robust``) and AutoAttack. Prints one row per (model, eps): clean,
PGD and AutoAttack robust accuracy, the samples AutoAttack broke that PGD did not (and the reverse),
the AutoAttack stages that broke something, and AutoAttack's seconds per sample. The load average is
printed before and after, since on a shared machine it decides the timings.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from harness import data
from harness.attacks import pgd_attack, pgd_robust
from harness.attacks.autoattack import autoattack
from harness.models import build_model


def train_small_cnn(x: torch.Tensor, y: torch.Tensor, *, steps: int, eps: float, seed: int = 0,
                    batch: int = 128, pgd_steps: int = 5) -> torch.nn.Module:
    """The small CNN after ``steps`` Adam steps: standard where eps == 0, else PGD training at eps."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = build_model("cnn_small", (1, 28, 28), 10, [0.1307], [0.3081])
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for step in range(steps):
            idx = torch.randint(len(x), (batch,), generator=g)
            xb, yb = x[idx], y[idx]
            if eps > 0:
                e = eps * min(1.0, 3 * (step + 1) / steps)
                xb = pgd_attack(model, xb, yb, e, steps=pgd_steps, step_size=2.5 * e / pgd_steps)
            model.train()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad()
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    """Train the models and print one row per (model, eps); see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="test images per row")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument("--steps", type=int, default=400, help="training steps per model")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=250, help="AutoAttack batch size")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _rows(args)
    finally:
        torch.set_num_threads(threads)  # called in-process (tests), the thread count is left as found


def _rows(args: argparse.Namespace) -> None:
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    (x, y), (xt, yt) = data.load_split("mnist", "train"), data.load_split("mnist", "test")
    xt, yt = xt[:args.n], yt[:args.n]
    models = {"standard": train_small_cnn(x, y, steps=args.steps, eps=0.0)}
    for eps in args.eps:
        models[f"pgd-{eps:g}"] = train_small_cnn(x, y, steps=args.steps, eps=eps)
    for eps in args.eps:
        for name in ("standard", f"pgd-{eps:g}"):
            model = models[name]
            with torch.random.fork_rng():
                torch.manual_seed(0)
                pgd = pgd_robust(model, xt, yt, eps, steps=50, restarts=1)
            start = time.perf_counter()
            result = autoattack(model, xt, yt, eps, seed=0, batch_size=args.batch_size)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                clean = (model(xt).argmax(1) == yt).float().mean()
            stages = sorted({s for s in result.broken_by if s not in (None, "clean")})
            print(f"{name:>10} eps {eps:g}: clean {clean:.3f}  PGD-50x1 {pgd.float().mean():.3f}  "
                  f"AutoAttack {result.robust.float().mean():.3f}  broken by AA only {int((pgd & ~result.robust).sum())}"
                  f"  by PGD only {int((~pgd & result.robust).sum())}  rejected {result.rejected}  stages {stages}  "
                  f"{seconds / args.n:.3f} s/sample ({seconds:.0f} s)", flush=True)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
