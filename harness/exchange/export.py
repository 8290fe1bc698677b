"""``python -m harness export RUN_ID``: a trained run as a VNN-COMP benchmark folder.

``exports/<run-id>/``: ``model.onnx`` (:func:`harness.exchange.onnx_io.export_onnx`, Normalize
inside), ``prop_<index>.vnnlib`` per chosen test sample (``index``: its place in the test set) and
``instances.csv``. The samples: the first ``n`` of the test set (the prefix the certification cascade
works through), or, with ``undecided``, the first ``n`` that the run's certification left undecided
(correct, broken by no attack, certified by no stage: :func:`harness.certification.records.undecided`),
the hard cases to hand to another verifier. Each property is the
threat model's box around the test image, B(x, eps) ∩ [0, 1], as float32 rounded outward
(:func:`harness.threat_model.outward_box`: the box the project's certifiers bound, containing the
real one and within one float32 unit of it), with the "label wins" property. The export is checked
before it is kept: onnxruntime's logits on the chosen images must equal the torch model's within
float32 tolerance, and every written property must parse back to the same float32 box.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.certification.records import undecided as undecided_rows
from harness.data import load_split
from harness.exchange.instances import write_instances
from harness.exchange.onnx_io import OnnxRunner, export_onnx
from harness.exchange.vnnlib import read_vnnlib, write_vnnlib
from harness.rundir import RunDir, load_model
from harness.threat_model import outward_box

__all__ = ["LOGIT_ATOL", "LOGIT_RTOL", "export_run", "undecided_indices"]

#: onnxruntime and torch may sum in different orders: their float32 logits agree to about this much.
LOGIT_ATOL, LOGIT_RTOL = 1e-4, 1e-4


def undecided_indices(run: RunDir, certify_key: str | None = None) -> np.ndarray:
    """Test indices that the run's certification (``certify-<key>.csv``; the only one if no key is given)
    left undecided, ascending."""
    records = sorted(p for p in run.path.glob("certify-*.csv") if not p.name.endswith(".partial.csv"))
    keys = [p.stem.removeprefix("certify-") for p in records]
    if certify_key is None:
        if not keys:
            raise ValueError(f"run {run.path.name} has no certification records: certify it first "
                             f"(python -m harness certify {run.path.name})")
        if len(keys) > 1:
            raise ValueError(f"run {run.path.name} has {len(keys)} certifications ({', '.join(keys)}): "
                             f"name one with --certify-key")
        certify_key = keys[0]
    elif certify_key not in keys:
        raise ValueError(f"run {run.path.name} has no certification {certify_key!r} "
                         f"(it has: {', '.join(keys) or 'none'})")
    df = pd.read_csv(run.path / f"certify-{certify_key}.csv")
    return df["index"].to_numpy()[undecided_rows(df)]


def export_run(run: RunDir, out_root: Path, *, n: int = 10, timeout_s: float = 60.0, undecided: bool = False,
               certify_key: str | None = None) -> Path:
    """Write ``out_root/<run-id>/`` (see the module docstring) and return it; checked, then moved into place."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cfg = run.read_config()
    if undecided:
        chosen = undecided_indices(run, certify_key)[:n]
        if not len(chosen):
            raise ValueError(f"run {run.path.name}: its certification left no sample undecided; nothing to export")
    else:
        chosen = np.arange(n)
    model = load_model(run, "cpu").float().eval()
    x, y = load_split(cfg.dataset, "test")
    chosen = chosen[chosen < len(x)]
    x, y = x[chosen], y[chosen]
    final = out_root / run.path.name
    tmp = out_root / f".{run.path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        export_onnx(model, tuple(x.shape[1:]), tmp / "model.onnx")
        with torch.no_grad():
            want = model(x).numpy()
        got = OnnxRunner(tmp / "model.onnx")(x.numpy())
        if not np.allclose(got, want, atol=LOGIT_ATOL, rtol=LOGIT_RTOL):
            raise RuntimeError(f"onnxruntime's logits differ from torch's by {np.abs(got - want).max():.3g}")
        lo, hi = outward_box(x.float(), float(cfg.eps), torch.float32)
        rows = []
        for i, index in enumerate(chosen.tolist()):
            name = f"prop_{index}.vnnlib"
            label = int(y[i])
            write_vnnlib(tmp / name, lo[i].numpy(), hi[i].numpy(), label, want.shape[1],
                         comment=f"run {run.path.name}, test sample {index}, label {label}, eps {cfg.eps}\n"
                                 f"box: B(x, eps) ∩ [0, 1] rounded outward to float32")
            back = read_vnnlib(tmp / name)
            if not (np.array_equal(back.lo.astype(np.float32), lo[i].numpy().reshape(-1))
                    and np.array_equal(back.hi.astype(np.float32), hi[i].numpy().reshape(-1))):
                raise RuntimeError(f"{name} does not parse back to the box it was written from")
            rows.append(("model.onnx", name, timeout_s))
        write_instances(tmp / "instances.csv", rows)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
