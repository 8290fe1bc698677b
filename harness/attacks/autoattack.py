"""AutoAttack (Croce & Hein, ICML 2020, https://arxiv.org/abs/2003.01690), the attack of record.

The attacks are the original implementation, from the ``pyautoattack`` package (fra31/auto-attack's
attack code, unchanged; requirements/base.txt says why this package). The standard version
runs, on the samples still unbroken after each one: APGD-CE (100 iterations), APGD-T (targeted DLR
loss, the 9 most likely other classes, 100 iterations each), FAB-T (9 target classes, 100
iterations each) and Square (5000 queries), all with l_inf radius eps in [0, 1] pixel space.

What this module adds around the library:

- every sample the library reports broken is checked by the project
  (:func:`harness.attacks.confirm.confirm_broken`) after clipping the point into the threat model
  (APGD clamps to x -+ eps rounded to nearest in float32, so nearly every point it returns lies a
  rounding outside the exact ball); an unconfirmed one counts as not broken and goes on to the next
  attack;
- the library seeds torch's global generator itself, so it runs inside ``torch.random.fork_rng``
  with the seed set from ``seed``: the result depends only on (model, x, y, eps, seed, batch_size)
  and the caller's random state is left as it was;
- the model is in eval mode with its parameters frozen during the attack (FAB calls
  ``backward()``, which would otherwise write ``.grad`` into the caller's model); both restored.

The library's own consistency checks (``checks.py``: randomness, dynamic defences via
``sys.settrace``) are not run: they are written for ``run_standard_evaluation``, whose settrace
would also switch off any tracer or debugger of the caller. Its warnings from inside the attacks
(e.g. zero gradients) go to the Python logger ``"auto-attack"``.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from harness.attacks.confirm import AttackResult, confirm_broken, predict
from harness.models import eval_mode
from harness import threat_model
from harness.threat_model import clip_to_threat_model

#: AutoAttack versions offered: the standard one, the attack of record ("plus" and "rand", for
#: randomised defences, are not wired up or tested here).
VERSIONS: tuple[str, ...] = ("standard",)

#: The standard version attacks 9 target classes, so it needs at least 10 classes.
MIN_CLASSES = 10


class _InputCast(nn.Module):
    """Hands the library's float32 points to a model that takes another dtype (float64)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


@contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Gradients w.r.t. the input only: no parameter gets a ``.grad`` during the block."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextmanager
def _isolated_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block on torch's global generators seeded from ``seed``; restore the caller's states after.

    Forks the CPU generator and, where CUDA is initialised, every CUDA device's (``torch.manual_seed``
    seeds them all). Where a device runtime is not initialised yet, torch only queues a seed call for
    its later initialisation; that queue is restored too, so the caller's first CUDA use later is
    seeded as it would have been.
    """
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    queued = []
    for name in ("cuda", "xpu", "mtia"):
        tracker = getattr(getattr(torch, name, None), "_lazy_seed_tracker", None)
        if tracker is not None:
            queued.append((tracker, dict(vars(tracker))))
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=cuda_devices))
            if device.type == "cuda":
                # The library seeds the *current* CUDA device: make it x's device.
                stack.enter_context(torch.cuda.device(device))
            torch.manual_seed(seed)
            yield
    finally:
        for tracker, state in queued:
            vars(tracker).clear()
            vars(tracker).update(state)


def _check_inputs(x: torch.Tensor, y: torch.Tensor, eps: float, seed: int, batch_size: int, version: str) -> float:
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; known: {', '.join(VERSIONS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int (it seeds every random draw of the attack), got {seed!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    eps = float(eps)
    if not 0.0 <= eps < float("inf"):  # also rejects NaN
        raise ValueError(f"eps must be a finite number >= 0 (l_inf radius in [0, 1] pixel space), got {eps}")
    # Square attack samples square patches of images: (N, C, H, W) only.
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float64) or x.dim() != 4:
        raise ValueError("x must be a float32 or float64 batch of images of shape (N, C, H, W), got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.long or y.shape != x.shape[:1]:
        raise ValueError(f"y must be an int64 tensor of shape ({x.shape[0]},) (one label per sample), got "
                         f"{type(y).__name__} {getattr(y, 'dtype', '')} {tuple(getattr(y, 'shape', ()))}")
    if y.device != x.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    return threat_model.check(x, eps)  # inputs in [0, 1]


def _check_logits(out: object, n: int, y: torch.Tensor) -> None:
    """The model must return logits: a (N, K) float tensor with K >= MIN_CLASSES, not probabilities."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() != 2 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"AutoAttack needs a model that returns logits of shape (N, num_classes) for N inputs; "
                         f"for {n} inputs it returned {shape}. Wrap the model so that forward returns the logits")
    k = out.shape[1]
    if k < MIN_CLASSES:
        raise ValueError(f"AutoAttack's standard version attacks {MIN_CLASSES - 1} target classes and "
                         f"need at least {MIN_CLASSES} classes; the model has {k}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
        raise ValueError(f"labels must lie in [0, {k}), got range [{int(y.min())}, {int(y.max())}]")
    # The library's own check_range_output test: rows in [0, 1] summing to 1 are probabilities.
    if bool((out.min() > -1e-5) & (out.max() < 1 + 1e-5)) and bool(((out.sum(1) - 1).abs() < 1e-5).all()):
        raise ValueError("the model's outputs look like probabilities (each row in [0, 1], summing to 1); "
                         "AutoAttack needs logits: remove the final softmax")


def _run_stage(adversary, stage: str, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    """One attack of the library on (x, y), set up as the library's run_standard_evaluation sets it up."""
    if stage == "apgd-ce":
        adversary.apgd.loss = "ce"
        adversary.apgd.seed = seed
        return adversary.apgd.perturb(x, y)
    if stage == "apgd-t":
        adversary.apgd_targeted.seed = seed
        return adversary.apgd_targeted.perturb(x, y)
    if stage == "fab-t":
        adversary.fab.targeted = True
        adversary.fab.n_restarts = 1
        adversary.fab.seed = seed
        return adversary.fab.perturb(x, y)
    if stage == "square":
        adversary.square.seed = seed
        return adversary.square.perturb(x, y)
    raise ValueError(f"AutoAttack stage {stage!r} is not supported here")


def configured_autoattack(model: nn.Module, eps: float, *, seed: int, device: torch.device | str,
                          version: str = "standard"):
    """The library's ``AutoAttack`` object set up for ``version`` (l_inf, ``eps``), verbose off.

    Its ``attacks_to_run`` lists the stages in order; its ``apgd``, ``apgd_targeted``, ``fab`` and
    ``square`` attributes hold each attack's settings (iterations, target classes, queries).
    """
    # Imported here, so that harness.attacks (PGD) still imports where pyautoattack is not installed.
    try:
        from pyautoattack import AutoAttack
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("AutoAttack needs the package pyautoattack: "
                                  "pip install pyautoattack==0.2.0 (pinned in requirements/base.txt)") from exc
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; known: {', '.join(VERSIONS)}")
    adversary = AutoAttack(model, norm="Linf", eps=float(eps), seed=seed, device=device, version=version)
    adversary.verbose = False
    return adversary


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, seed: int,
               batch_size: int = 250, version: str = "standard",
               log: Callable[[str], None] | None = None) -> AttackResult:
    """Run AutoAttack on (x, y) at l_inf radius ``eps`` (pixel space) and confirm every success.

    Per sample: robust (no confirmed adversarial point) and, where broken, the point and the
    stage that found it (see :class:`~harness.attacks.confirm.AttackResult`). A misclassified clean
    sample is not robust and is not attacked. Each stage attacks the samples still unbroken, in
    chunks of ``batch_size`` (the library reseeds at every chunk, so the result depends on it).
    Runs on x's device; ``log``, if given, receives one line per stage.
    """
    eps = _check_inputs(x, y, eps, seed, batch_size, version)
    n = x.shape[0]
    with eval_mode(model), torch.no_grad():
        if n:
            _check_logits(model(x[:batch_size]), min(n, batch_size), y)
        pred = predict(model, x, batch_size)
    robust = pred == y
    broken_by: list[str | None] = [None if r else "clean" for r in robust.tolist()]
    x_adv = x.detach().clone()
    rejected = 0
    if eps == 0.0 or not robust.any():
        return AttackResult(robust, x_adv, tuple(broken_by), rejected)

    # The library feeds its attacks float32 points; other dtypes go through a cast.
    target = model if x.dtype == torch.float32 else _InputCast(model, x.dtype)
    x32 = x.detach().float()
    adversary = configured_autoattack(target, eps, seed=seed, device=x.device, version=version)
    with eval_mode(model), _frozen_parameters(model), _isolated_global_rng(seed, x.device), torch.no_grad():
        for stage in adversary.attacks_to_run:
            start, todo = time.perf_counter(), robust.nonzero().flatten()
            for chunk in todo.split(batch_size):
                candidate = _run_stage(adversary, stage, x32[chunk], y[chunk], seed).to(x.dtype)
                claimed = predict(model, candidate, batch_size) != y[chunk]
                point = clip_to_threat_model(candidate, x[chunk], eps)
                ok = confirm_broken(model, x[chunk], y[chunk], point, eps, batch_size=batch_size)
                rejected += int((claimed & ~ok).sum())
                hit = chunk[ok]
                robust[hit] = False
                x_adv[hit] = point[ok]
                for i in hit.tolist():
                    broken_by[i] = stage
            if log is not None:
                log(f"autoattack {stage}: {len(todo) - int(robust.sum())} of {len(todo)} broken, "
                    f"{int(robust.sum())} of {n} robust ({time.perf_counter() - start:.1f} s)")
            if not robust.any():
                break
    return AttackResult(robust, x_adv, tuple(broken_by), rejected)
