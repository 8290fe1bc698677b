"""The certification cascade of one run: its stages, their state, and a checkpoint after each.

    clean -> IBP (own) + IBP (auto_LiRPA) -> CROWN-IBP                    every test sample
          -> PGD                       every correct sample (``pgd_on_certified = false``: every undecided one)
          -> CROWN -> alpha-CROWN -> AutoAttack -> complete (MILP)     undecided samples, within budgets
          -> AutoAttack on certified samples                           the soundness alarm

A sample is *decided* once it is misclassified, broken by an attack (a point a plain forward pass
misclassifies), or certified; the later stages work only on the undecided ones. Each budgeted stage
processes at most its budget of undecided samples, in index order, and covers the test-set prefix up
to the last one it processed (see :func:`budgeted`). After every stage (and every few seconds inside
the complete stage) the state is written to ``certify-<key>.partial.npz`` + ``.json``, so an interrupted
certification resumes where it stopped with the same records as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from harness.attacks import pgd_robust
from harness.attacks.autoattack import autoattack
from harness.bounds import certify as certify_batch
from harness.bounds.complete import verify_sample
from harness.bounds.ibp import ibp_bounds
from harness.bounds.milp import MILPNetwork, intersect_relu_bounds
from harness.bounds.spec import spec_matrix
from harness.bounds.tighten import verify_with_lp_bounds
from harness.certification.records import (
    CERTIFIERS,
    COMPLETE_VERDICTS,
    SIDE_CERTIFIERS,
    InvariantError,
    broken_rule,
    certified_rule,
    col,
    covered_key,
    margin_col,
)
from harness.config.settings import CertifySettings
from harness.data import load_split
from harness.rundir import RunDir, atomic_write_bytes, load_model, write_json
from harness.runtime.batching import AdaptiveBatches
from harness.runtime.randomness import SampleNoise, derived_seed
from harness.runtime.workers import init_worker
from harness.threat_model import input_box

STAGES = ("clean", "full", "pgd", "crown", "alpha-crown", "autoattack", "complete", "alarm")
PARTIAL_EVERY_S = 20.0


def budgeted(undecided: np.ndarray, budget: int, n: int) -> tuple[np.ndarray, int]:
    """(the undecided indices a stage processes, the length of the test-set prefix it then covers)."""
    if budget <= 0:
        return undecided[:0], 0
    if budget >= len(undecided):
        return undecided, n
    chosen = undecided[:budget]
    return chosen, int(chosen[-1]) + 1


class Cascade:
    """One run's certification: the model, the test data, the records so far."""

    def __init__(self, run: RunDir, settings: CertifySettings, device: torch.device, log: Callable[[str], None]):
        self.run, self.settings, self.device, self.log = run, settings, device, log
        self.cfg = run.read_config()
        self.model = load_model(run, device)
        x, y = load_split(self.cfg.dataset, "test")
        self.n = n = min(settings.n_test, len(x))
        self.x, self.y = x[:n], y[:n]
        self.eps = self.cfg.eps
        self.rows: dict[str, np.ndarray] = {"index": np.arange(n), "label": self.y.numpy()}
        self.times: dict[str, float] = {}
        self.covered: dict[str, int] = {}
        self.stats: dict[str, object] = {}
        self.done: list[str] = []
        self.batches = AdaptiveBatches(device, log)
        self.arch_key = (self.cfg.arch, self.cfg.width, tuple(self.x.shape[1:]))
        self.partial = run.path / f"certify-{settings.key}.partial.npz"

    # -- state ----------------------------------------------------------------------------------------
    @property
    def correct(self) -> np.ndarray:
        return self.rows["clean_pred"] == self.rows["label"]

    def broken(self) -> np.ndarray:
        """:func:`harness.certification.records.broken_rule` on the rows so far."""
        code = self.rows.get("complete_code")
        return broken_rule(self.rows["pgd_robust"], self.rows.get("aa_broken"),
                           None if code is None else code == COMPLETE_VERDICTS.index("counterexample"))

    def certified(self) -> np.ndarray:
        """:func:`harness.certification.records.certified_rule` on the rows so far (any certifier that ran)."""
        verdicts = [self.rows[f"raw_{col(c)}"] for c in CERTIFIERS if f"raw_{col(c)}" in self.rows]
        if "complete_code" in self.rows:
            verdicts.append((self.rows["complete_code"] == COMPLETE_VERDICTS.index("verified")).astype(int))
        return certified_rule(verdicts) if verdicts else np.zeros(self.n, dtype=bool)

    def undecided(self) -> np.ndarray:
        return np.flatnonzero(self.correct & ~self.broken() & ~self.certified())

    def on_device(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx].to(self.device), self.y[idx].to(self.device)

    def timed(self, stage: str, idx: np.ndarray, size: int, fn: Callable[[np.ndarray], None]) -> None:
        t = time.perf_counter()
        self.batches.run((stage,) + self.arch_key, idx, size, fn)
        self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - t

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_partial(self) -> None:
        buf = io.BytesIO()
        np.savez(buf, **self.rows)
        atomic_write_bytes(self.partial, buf.getvalue())
        write_json(self.partial.with_suffix(".json"), {
            "settings": self.settings.to_dict(), "done": self.done, "times_s": self.times, "covered": self.covered,
            "stats": self.stats, "batch_sizes": self.batches.used})

    def restore_partial(self) -> bool:
        """Load the state of an interrupted certification made with the same settings."""
        meta_path = self.partial.with_suffix(".json")
        if not (self.partial.exists() and meta_path.exists()):
            return False
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") != self.settings.to_dict():
            return False
        with np.load(self.partial, allow_pickle=False) as data:
            self.rows = {k: data[k] for k in data.files}
        self.done, self.times, self.covered = meta["done"], meta["times_s"], meta["covered"]
        self.stats, self.batches.used = meta["stats"], meta["batch_sizes"]
        self.log(f"  resuming the certification of {self.run.path.name} after {', '.join(self.done) or 'nothing'}")
        return True

    def drop_partial(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.partial.with_suffix(".json").unlink(missing_ok=True)

    def run_all(self) -> None:
        steps = {"clean": self.clean, "pgd": self.pgd, "full": self.full_certifiers,
                 "crown": lambda: self.budgeted_certifier("crown", self.settings.crown_samples),
                 "alpha-crown": lambda: self.budgeted_certifier("alpha-crown", self.settings.alpha_crown_samples),
                 "autoattack": self.autoattack, "complete": self.complete, "alarm": self.alarm}
        self.restore_partial()
        for stage in STAGES:
            if stage in self.done:
                continue
            steps[stage]()
            self.done.append(stage)
            self.save_partial()

    # -- stages ---------------------------------------------------------------------------------------
    def clean(self) -> None:
        pred = np.empty(self.n, dtype=np.int64)

        def fn(j):
            with torch.no_grad():
                pred[j] = self.model(self.on_device(j)[0]).argmax(1).cpu().numpy()
        self.timed("clean", np.arange(self.n), self.settings.batch_size, fn)
        self.rows["clean_pred"] = pred

    def pgd(self) -> None:
        """PGD on the correct samples; ``pgd_on_certified = false`` leaves out those certified already.

        A certified sample cannot be broken, so leaving it out changes no verdict of a sound certifier:
        the column keeps its meaning ("not broken by PGD") on every sample. What it gives up is PGD as a
        soundness check of those certificates; the alarm (AutoAttack on certified samples), the own IBP
        against auto_LiRPA, and the MILP's counterexamples against every certificate remain.
        """
        candidates = self.correct if self.settings.pgd_on_certified else self.correct & ~self.certified()
        robust = ~candidates & self.correct    # left out: certified, so robust
        noise = SampleNoise(derived_seed(self.run.path.name, "pgd"), self.x.shape[1:])

        def fn(j):
            xb, yb = self.on_device(j)
            robust[j] = pgd_robust(self.model, xb, yb, self.eps, steps=self.settings.pgd_steps,
                                   restarts=self.settings.pgd_restarts, start_noise=noise.starts(j)).cpu().numpy()
        idx = np.flatnonzero(candidates)
        self.stats["pgd_attacked"] = int(len(idx))
        self.timed("pgd", idx, self.settings.batch_size, fn)
        self.rows["pgd_robust"] = robust

    def certifier(self, name: str, idx: np.ndarray, size: int) -> np.ndarray:
        """Run one bound method on ``idx``; stores its raw verdicts and margins, returns the verdicts."""
        verdict, margin = np.full(self.n, np.nan), np.full(self.n, np.nan)

        def fn(j):
            xb, yb = self.on_device(j)
            v = certify_batch(self.model, xb, yb, self.eps, name, alpha_iterations=self.settings.alpha_iterations,
                              alpha_lr=self.settings.alpha_lr)
            verdict[j], margin[j] = v.certified.cpu().numpy(), v.min_margin.cpu().numpy()
        self.timed(name, idx, size, fn)
        self.rows[f"raw_{col(name)}"], self.rows[margin_col(name)] = verdict, margin
        return verdict

    def full_certifiers(self) -> None:
        everything = np.arange(self.n)
        for name in ("ibp", "lirpa-ibp", "crown-ibp"):
            self.certifier(name, everything, self.settings.batch_size)
        if getattr(self.settings, "lp_dual", False):
            self.certifier("lp-dual", everything, self.settings.crown_batch_size)
            self.log(f"  lp-dual: every sample bounded; {self.times.get('lp-dual', 0.0):.1f}s")

    def budgeted_certifier(self, name: str, budget: int) -> None:
        idx, covered = budgeted(self.undecided(), budget, self.n)
        self.covered[covered_key(name)] = covered
        self.certifier(name, idx, self.settings.crown_batch_size)
        if budget > 0:
            self.log(f"  {name}: {len(idx)} undecided sample(s) bounded, covering the first {covered}; "
                     f"{self.times.get(name, 0.0):.1f}s")

    def autoattack(self) -> None:
        """AutoAttack (standard) on undecided samples within its budget; every break is confirmed."""
        idx, covered = budgeted(self.undecided(), self.settings.autoattack_samples, self.n)
        self.covered[covered_key("autoattack")] = covered
        broken = np.zeros(self.n, dtype=bool)
        size = self.settings.autoattack_batch_size
        self.rows["aa_broken"] = broken
        if not len(idx):
            return

        def fn(j):
            xb, yb = self.on_device(j)
            # seeded by the chunk's first sample: the result depends on the run and the chunking only
            r = autoattack(self.model, xb, yb, self.eps, seed=derived_seed(self.run.path.name, "autoattack", j[0]),
                           batch_size=len(j))
            broken[j] = ~r.robust.cpu().numpy()
        self.timed("autoattack", idx, size, fn)
        self.log(f"  autoattack: {int(broken.sum())} of {len(idx)} undecided sample(s) broken, covering the "
                     f"first {covered}; {self.times['autoattack']:.1f}s")

    def complete(self) -> None:
        """The MILP of :mod:`harness.bounds.complete` on undecided samples within its budget (on the CPU).

        With ``complete_jobs`` > 1 the samples go to that many worker processes of one thread each: a
        sample's program and verdict are the same whichever process solves it (only a verdict the
        wall-clock cap decides depends on the machine's load, as it does with one process).
        """
        s = self.settings
        if "complete_code" not in self.rows:
            self.rows["complete_code"] = np.zeros(self.n, dtype=np.int64)
            self.rows[margin_col("complete")] = np.full(self.n, np.nan)
            idx, covered = budgeted(self.undecided(), s.complete_samples, self.n)
            self.rows["complete_todo"] = idx
            self.covered[covered_key("complete")] = covered
            self.stats["complete"] = {"wall_clock_limited": 0, "seconds": []}
        todo = [int(i) for i in self.rows["complete_todo"] if self.rows["complete_code"][i] == 0]
        if not todo:
            return
        model = copy.deepcopy(self.model).cpu().float().eval()
        shape = tuple(self.x.shape[1:])
        code, margin = self.rows["complete_code"], self.rows[margin_col("complete")]
        stats = self.stats["complete"]
        t0 = last_save = time.perf_counter()
        jobs = min(getattr(s, "complete_jobs", 1), len(todo))
        # numpy copies, not tensors: a tensor sent to a worker process has its whole storage moved to shared
        # memory, which would pull the test set's storage from under the arrays that share it (rows["label"])
        items = [(i, self.x[i:i + 1].numpy().copy(), int(self.y[i])) for i in todo]
        with contextlib.ExitStack() as stack:
            if jobs == 1:
                _milp_worker_init(model, shape, None)
                results = (_milp_worker_decide(item, self.eps, s) for item in items)
            else:
                pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
                    jobs, initializer=_milp_worker_init, initargs=(model, shape, os.getpid())))
                # the pool's exit terminates its workers, also on an interrupt or an error here
                results = pool.imap_unordered(functools.partial(_milp_worker_decide, eps=self.eps, s=s), items)
            for i, r in results:
                code[i] = COMPLETE_VERDICTS.index(r.verdict)
                margin[i] = r.margin
                stats.setdefault("unstable", []).append(r.unstable)
                if r.too_many_unstable:
                    stats["too_many_unstable"] = stats.get("too_many_unstable", 0) + 1
                    continue
                if r.lp_tightened:
                    stats["lp_tightened"] = stats.get("lp_tightened", 0) + 1
                stats["wall_clock_limited"] += int(r.wall_clock_limited)
                stats["seconds"].append(round(r.seconds, 3))
                if time.perf_counter() - last_save > PARTIAL_EVERY_S:
                    self.times["complete"] = self.times.get("complete", 0.0) + time.perf_counter() - last_save
                    self.save_partial()
                    last_save = time.perf_counter()
        _MILP_WORKER.clear()
        self.times["complete"] = self.times.get("complete", 0.0) + time.perf_counter() - last_save
        done = self.rows["complete_todo"]
        verdicts = {v: int((code[done] == k).sum()) for k, v in enumerate(COMPLETE_VERDICTS) if v}
        self.log(f"  complete: {len(done)} undecided sample(s): {verdicts}, covering the first "
                 f"{self.covered[covered_key('complete')]}; {time.perf_counter() - t0:.1f}s"
                 f"{f' in {jobs} processes' if jobs > 1 else ''}")

    def alarm(self) -> None:
        """AutoAttack on the first certified samples: a break means a bound (or the attack) is wrong."""
        certified = np.flatnonzero(self.certified() & self.correct)[:self.settings.autoattack_certified_check]
        self.stats["alarm_samples"] = int(len(certified))
        broken = np.zeros(self.n, dtype=bool)
        if not len(certified):
            return

        def fn(j):
            xb, yb = self.on_device(j)
            r = autoattack(self.model, xb, yb, self.eps, seed=derived_seed(self.run.path.name, "alarm", j[0]),
                           batch_size=len(j))
            broken[j] = ~r.robust.cpu().numpy()
        self.timed("alarm", certified, self.settings.autoattack_batch_size, fn)
        if broken.any():
            raise InvariantError(f"run {self.run.path.name}: AutoAttack breaks certified sample(s) "
                                 f"{np.flatnonzero(broken)[:5].tolist()}: a bound or the attack is wrong")

    # -- records --------------------------------------------------------------------------------------
    def records(self) -> pd.DataFrame:
        """The per-sample table: cumulative verdict columns, NaN outside what each stage covered."""
        r = self.rows
        out = {k: r[k] for k in ("index", "label", "clean_pred", "pgd_robust")}
        cumulative = np.zeros(self.n, dtype=bool)
        for c in CERTIFIERS:
            if c == "complete":
                raw = np.where(r.get("complete_code", np.zeros(self.n)) == 1, 1.0, np.nan)
            else:
                raw = r.get(f"raw_{col(c)}", np.full(self.n, np.nan))
            covered = self.covered.get(covered_key(c), self.n) if c not in ("ibp", "lirpa-ibp", "crown-ibp") \
                else self.n
            if c == "lirpa-ibp":  # not in the cascade: checked against the own IBP instead
                out[col(c)] = raw
                out[margin_col(c)] = r[margin_col(c)]
                continue
            cumulative = cumulative | (raw == 1)
            column = np.full(self.n, np.nan)
            column[:covered] = cumulative[:covered]
            out[col(c)] = column
            out[margin_col(c)] = r.get(margin_col(c), np.full(self.n, np.nan))
        for c in SIDE_CERTIFIERS:
            if f"raw_{col(c)}" in r:
                out[col(c)], out[margin_col(c)] = r[f"raw_{col(c)}"], r[margin_col(c)]
        aa_cov = self.covered.get(covered_key("autoattack"), 0)
        aa = np.full(self.n, np.nan)
        aa[:aa_cov] = (r["pgd_robust"].astype(bool) & ~r.get("aa_broken", np.zeros(self.n, bool)))[:aa_cov]
        out["aa_robust"] = aa
        code = r.get("complete_code", np.zeros(self.n, dtype=np.int64))
        out["complete"] = [COMPLETE_VERDICTS[k] for k in code]
        return pd.DataFrame(out)


# -- the complete stage's per-sample recipe, in this process or in a worker process ------------------------

#: A MILP worker's model and its MILP network, built once per process by :func:`_milp_worker_init`.
_MILP_WORKER: dict[str, object] = {}


@dataclass(frozen=True)
class SampleDecision:
    """What the complete stage found for one sample."""

    verdict: str                  # one of COMPLETE_VERDICTS
    margin: float                 # the MILP's lower bound on the sample's smallest margin (nan if it did not run)
    unstable: int                 # unstable ReLUs after intersecting the own IBP's and CROWN's bounds
    too_many_unstable: bool       # skipped as unknown (complete_max_unstable)
    lp_tightened: bool            # tried again on bounds tightened by LP
    wall_clock_limited: bool
    seconds: float


def _milp_worker_init(model: torch.nn.Module, shape: tuple[int, ...], parent: int | None) -> None:
    """A MILP worker (``parent`` given): one thread, its life tied to its driver's; then the network."""
    if parent is not None:
        init_worker(1, parent)
    _MILP_WORKER["model"], _MILP_WORKER["net"] = model, MILPNetwork.from_model(model, shape)


def _milp_worker_decide(item: tuple[int, np.ndarray, int], eps: float, s: CertifySettings) -> tuple[int, SampleDecision]:
    i, x, y = item
    return i, decide_sample(_MILP_WORKER["model"], _MILP_WORKER["net"], torch.from_numpy(x),
                            torch.tensor([y], dtype=torch.int64), eps, s)


def decide_sample(model: torch.nn.Module, net: MILPNetwork, x: torch.Tensor, y: torch.Tensor, eps: float,
                  s: CertifySettings) -> SampleDecision:
    """The complete stage's recipe for one sample ``x`` (1, ...) with label ``y`` (1,).

    The ReLU bounds are the own IBP's intersected with CROWN's; the margin bounds CROWN and CROWN-IBP
    already proved are handed to the MILP; a sample the MILP leaves unknown after
    ``complete_tighten_after_s`` is tried again on bounds tightened by LP, within the same cap.
    """
    # Deferred: importing auto_LiRPA patches torch (harness.bounds.lirpa_compat) and is not needed by a
    # certification without the complete stage, nor by a command that only imports this module.
    from harness.bounds import lirpa

    t = time.perf_counter()
    lo, hi = input_box(x, eps)
    with torch.no_grad():
        own = ibp_bounds(model, lo, hi, spec_matrix(y, net.num_classes)).preact
    crown = lirpa.lirpa_relu_bounds(model, x, y, eps, "crown")
    known = torch.maximum(lirpa.lirpa_margin_bounds(model, x, y, eps, "crown"),
                          lirpa.lirpa_margin_bounds(model, x, y, eps, "crown-ibp"))
    bounds = intersect_relu_bounds(own, crown)
    unstable = sum(int(((lo < 0) & (hi > 0)).sum()) for lo, hi in bounds)
    if s.complete_max_unstable and unstable > s.complete_max_unstable:
        # deterministic, unlike the wall-clock cap: such programs rarely finish within it
        return SampleDecision("unknown", float("nan"), unstable, True, False, False, time.perf_counter() - t)
    tighten_after = getattr(s, "complete_tighten_after_s", 0.0)
    first = min(tighten_after, s.complete_time_limit_s) if tighten_after else s.complete_time_limit_s
    r = verify_sample(net, model, x[0], int(y), eps, bounds, margin_lower=known[0],
                      node_limit=s.complete_node_limit, time_limit_s=first, threads=1)
    tightened = bool(r.verdict == "unknown" and tighten_after and s.complete_time_limit_s > r.time_s)
    if tightened:
        # the hard ones: again, on bounds tightened by LP (the first try's time counts against the cap)
        r = verify_with_lp_bounds(net, model, x[0], int(y), eps, bounds, margin_lower=known[0],
                                  node_limit=s.complete_node_limit, time_limit_s=s.complete_time_limit_s - r.time_s,
                                  threads=1)
    return SampleDecision(r.verdict, r.min_lower_bound, unstable, False, tightened, bool(r.wall_clock_limited),
                          time.perf_counter() - t)
