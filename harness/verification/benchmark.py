"""ONNX + VNN-LIB instances through the verification API: ``python -m harness verify``.

:func:`load_instances` reads and checks everything first (networks converted, properties parsed,
boxes inside [0, 1], the output property of a form the API decides: the classification form, or
linear constraints through :mod:`harness.verification.properties`), so a bad file is a one-line
error before anything is written. :func:`run_instances` then verifies each instance, writes one row per instance to
``results.csv`` and, for ``sat``, a VNN-COMP counterexample file (``((X_0 v) ... (Y_9 v))``) whose
input onnxruntime has put on the wrong side of the property inside the box; a counterexample that
onnxruntime does not confirm is reported ``unknown``, never ``sat``.
:func:`compare_official` sets the verdicts beside a benchmark's official results.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.exchange.instances import Instance
from harness.exchange.onnx_io import OnnxRunner, load_onnx, onnx_to_torch
from harness.exchange.vnnlib import VNNLibError, classification_label, read_vnnlib
from harness.rundir import git_commit, now, versions, write_json
from harness.runtime.device import cpu_name
from harness.verification.api import Box, Verifier, VerifySettings
from harness.verification.properties import LinearProperty, PropertyVerifier

__all__ = ["RESULT_COLUMNS", "Loaded", "compare_official", "load_instances", "run_instances", "write_provenance"]

RESULT_COLUMNS = ("onnx", "vnnlib", "result", "time_s", "stage", "reason", "timeout_s", "band", "counterexample")


@dataclass
class Loaded:
    """A checked instance: its network (shared between instances of the same file), box and property.

    The property is the classification form ("label" wins; ``linear`` None) or linear output
    constraints (``linear``; ``label`` None), see :mod:`harness.verification.properties`.
    """

    instance: Instance
    network: tuple  # (model, in_shape, proto)
    box: Box
    label: int | None
    linear: LinearProperty | None = None

    def unsafe(self, y: np.ndarray) -> bool:
        """Whether the network output ``y`` lies in the property's unsafe set (exactly)."""
        if self.linear is not None:
            return self.linear.met_by(y)
        return bool(np.delete(y, self.label).max() >= y[self.label])


def load_instances(instances: list[Instance]) -> list[Loaded]:
    """Convert every network and parse every property; raise ValueError (one line, naming the file) on the first bad one."""
    networks: dict[Path, tuple] = {}
    out = []
    for inst in instances:
        if inst.onnx not in networks:
            proto = load_onnx(inst.onnx)
            model, in_shape = onnx_to_torch(proto, str(inst.onnx))
            networks[inst.onnx] = (model, in_shape, proto)
        model, in_shape, _ = networks[inst.onnx]
        prop = read_vnnlib(inst.vnnlib)
        label, linear = classification_label(prop), None
        if label is None:
            try:
                linear = LinearProperty.from_clauses(prop.clauses, prop.n_outputs)
            except ValueError as err:
                raise VNNLibError(f"{inst.vnnlib}: {err}") from None
        n = math.prod(in_shape)
        with torch.no_grad():
            k = int(model(torch.zeros((1,) + in_shape)).shape[1])
        if prop.lo.size != n or prop.n_outputs != k:
            raise VNNLibError(f"{inst.vnnlib}: declares {prop.lo.size} inputs and {prop.n_outputs} outputs, the "
                              f"network {inst.onnx.name} has {n} and {k}")
        try:
            box = Box(prop.lo, prop.hi, in_shape)
        except ValueError as err:
            raise ValueError(f"{inst.vnnlib}: {err}") from None
        out.append(Loaded(inst, networks[inst.onnx], box, label, linear))
    return out


def _cex_text(x: np.ndarray, y: np.ndarray) -> str:
    """VNN-COMP's counterexample format; values as the shortest decimals that read back to the float32s."""
    parts = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x.reshape(-1))]
    parts += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y.reshape(-1))]
    return "(" + "\n ".join(parts) + ")\n"


_WORKER_VERIFIERS: dict[str, Verifier | PropertyVerifier] = {}


def _verify(item: Loaded, settings: VerifySettings, limit: float, key: str,
            verifiers: dict[str, Verifier | PropertyVerifier]):
    """One instance: (the verification result, its wall time), with ``verifiers`` caching one per network
    (and per linear property: its head is part of the verified network)."""
    model, in_shape, _ = item.network
    if item.linear is not None:
        key = f"{key}#{item.linear.fingerprint()}"
    if key not in verifiers:
        verifiers[key] = (Verifier(model, in_shape, settings) if item.linear is None
                          else PropertyVerifier(model, in_shape, item.linear, settings))
    v = verifiers[key]
    v.settings = VerifySettings(**{**settings.__dict__, "time_limit_s": limit})
    t = time.perf_counter()
    r = v.verify(item.box, item.label) if item.linear is None else v.verify(item.box)
    r.complete = None  # not needed past here (and not sent between processes)
    return r, time.perf_counter() - t


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_verify(item: Loaded, settings: VerifySettings, limit: float, key: str):
    return _verify(item, settings, limit, key, _WORKER_VERIFIERS)


def run_instances(loaded: list[Loaded], out_dir: Path, *, settings: VerifySettings, timeout_cap: float | None = None,
                  jobs: int = 1, log: Callable[[str], None] = print) -> list[dict]:
    """Verify every instance; write ``out_dir/results.csv`` (rewritten after each instance) and counterexamples.

    ``jobs`` > 1: that many instances at a time, each in its own process with one torch thread (VNN-COMP
    gives an instance one machine; here each gets one core). The rows keep the instances' order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    runners: dict[str, OnnxRunner] = {}
    rows: dict[int, dict] = {}
    limits = [item.instance.timeout_s if timeout_cap is None else min(item.instance.timeout_s, timeout_cap)
              for item in loaded]
    keys = [str(item.instance.onnx) for item in loaded]

    def record(i: int, r, elapsed: float) -> None:
        item, limit = loaded[i], limits[i]
        inst = item.instance
        if keys[i] not in runners:
            runners[keys[i]] = OnnxRunner(item.network[2])
        result, reason, cex_name = r.status, r.reason, ""
        if r.status == "sat":
            x = r.counterexample.numpy().astype(np.float32)
            y = runners[keys[i]](x[None])[0]
            if item.box.contains(torch.from_numpy(x)) and item.unsafe(y):
                cex_name = f"{_stem(inst.onnx)}_{_stem(inst.vnnlib)}.counterexample"
                (out_dir / cex_name).write_text(_cex_text(x, y))
            else:
                result, reason = "unknown", "a counterexample of the torch model that onnxruntime does not confirm"
        if result in ("sat", "unsat") and elapsed > limit:
            # the stages before the MILP do not stop on the clock: say so (the summary counts it apart)
            reason = f"decided after the time limit ({elapsed:.1f} s > {limit:g} s)"
        rows[i] = {"onnx": inst.onnx.name, "vnnlib": inst.vnnlib.name, "result": result,
                   "time_s": round(elapsed, 3), "stage": r.stage, "reason": reason,
                   "timeout_s": limit, "band": f"{r.band:.3g}", "counterexample": cex_name}
        row = rows[i]
        log(f"{row['onnx']} {row['vnnlib']}: {result} ({r.stage}, {row['time_s']:.1f} s){': ' + reason if reason else ''}")
        _write_csv(out_dir / "results.csv", [rows[k] for k in sorted(rows)], RESULT_COLUMNS)

    if jobs <= 1:
        verifiers: dict[str, Verifier] = {}
        for i, item in enumerate(loaded):
            record(i, *_verify(item, settings, limits[i], keys[i], verifiers))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                 initargs=(1,)) as pool:
            futures = {pool.submit(_worker_verify, item, settings, limits[i], keys[i]): i
                       for i, item in enumerate(loaded)}
            for fut in as_completed(futures):
                record(futures[fut], *fut.result())
    return [rows[k] for k in sorted(rows)]


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (".gz", ".onnx", ".vnnlib"):
        name = name.removesuffix(suffix)
    return name


def _write_csv(path: Path, rows: list[dict], columns) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def compare_official(rows: list[dict], official_csv: Path, out_dir: Path) -> dict:
    """Our verdicts beside the official ones (``official.csv``: onnx, vnnlib, consensus, one column per tool).

    Writes ``out_dir/comparison.csv`` (per instance) and ``out_dir/summary.csv`` (decided / agree /
    disagree for us and every official tool, over the instances we ran; for us also how many were
    decided within their time limit). Returns our counts.
    """
    with Path(official_csv).open(newline="") as f:
        official = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(f)}
    tools = [c for c in next(iter(official.values())) if c not in ("onnx", "vnnlib", "consensus")]
    per_instance, counts = [], {name: {"decided": 0, "agree": 0, "disagree": 0} for name in ["harness"] + tools}
    counts["harness"]["decided_in_time"] = 0
    official_decided = 0
    for row in rows:
        key = (_plain(row["onnx"]), _plain(row["vnnlib"]))
        ref = official.get(key)
        if ref is None:
            continue
        truth = ref["consensus"]
        official_decided += truth in ("sat", "unsat")
        for name, verdict in [("harness", row["result"])] + [(t, ref[t]) for t in tools]:
            if verdict in ("sat", "unsat"):
                c = counts[name]
                c["decided"] += 1
                if name == "harness":
                    c["decided_in_time"] += float(row["time_s"]) <= float(row["timeout_s"])
                if truth in ("sat", "unsat"):
                    c["agree" if verdict == truth else "disagree"] += 1
        per_instance.append({"onnx": key[0], "vnnlib": key[1], "harness": row["result"], "official": truth,
                             "stage": row["stage"], "time_s": row["time_s"]})
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "comparison.csv", per_instance, ("onnx", "vnnlib", "harness", "official", "stage", "time_s"))
    summary = [{"verifier": name, "instances": len(per_instance), "official_decided": official_decided, **c}
               for name, c in counts.items()]
    _write_csv(out_dir / "summary.csv", summary,
               ("verifier", "instances", "official_decided", "decided", "agree", "disagree", "decided_in_time"))
    return counts["harness"] | {"instances": len(per_instance), "official_decided": official_decided}


def _plain(name: str) -> str:
    return name.removesuffix(".gz")


def write_provenance(out_dir: Path, *, benchmark: str, instances: int, wall_s: float, settings: VerifySettings,
                     timeout_cap: float | None, jobs: int, threads: int) -> None:
    """``out_dir/provenance.json``: what made these results (commit, date, machine, versions, settings, wall
    time). ``benchmark`` is a name (e.g. the benchmark folder's), never a path of this machine."""
    write_json(out_dir / "provenance.json", {
        "command": "python -m harness verify", "benchmark": benchmark, "instances": instances,
        "git_commit": git_commit(), "finished": now(), "wall_time_s": round(wall_s, 1),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": torch.cuda.is_available()},
        "versions": versions(), "jobs": jobs, "torch_threads_per_job": 1 if jobs > 1 else threads,
        "timeout_cap_s": timeout_cap, "settings": dict(settings.__dict__)})
