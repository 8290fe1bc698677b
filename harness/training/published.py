"""A published checkpoint as a finished run: certified like a model the harness trained.

:func:`import_checkpoint` turns a run config with ``checkpoint = "<name>"`` (method ``published``) into a
run folder ``runs/<run id>/`` holding what a trained run holds (``config.json``, ``checkpoint.pt`` with
its checksum sidecar, ``manifest.json`` with ``status: finished``), so that certification, records,
tables and checks treat it like any run. The manifest says it was loaded, not trained
(``origin: "published checkpoint"``), from which file, with which md5 and source. The run id comes from
the checkpoint's identity (md5, architecture, key map, normalisation) and the eps it is certified at
(:attr:`harness.config.settings.RunConfig.run_id`).

The weights are looked for at ``benchmarks/checkpoints/<file>`` (shipped with the repository when
small); when absent they are downloaded from the description's URL if the machine can reach it. Either
way the bytes must have the described size and md5, or nothing is written.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
from pathlib import Path

import torch
from torch import nn

from harness.config.checkpoints import PublishedCheckpoint, load_checkpoint_spec
from harness.config.constraints import ConfigError
from harness.config.settings import RUNS, RunConfig
from harness.data import get_info
from harness.models import build_model
from harness.rundir import RunDir, atomic_write_bytes, git_commit, now, save_checkpoint, versions, write_json

__all__ = ["ChecksumError", "checkpoint_bytes", "import_checkpoint", "published_model"]


class ChecksumError(RuntimeError):
    """The checkpoint file is not the published one (size or md5 differ)."""


def _check(spec: PublishedCheckpoint, data: bytes, where: str) -> None:
    md5 = hashlib.md5(data).hexdigest()
    if len(data) != spec.size_bytes or md5 != spec.md5:
        raise ChecksumError(f"{where}: {len(data):,} bytes, md5 {md5}; checkpoint {spec.name!r} is "
                            f"{spec.size_bytes:,} bytes, md5 {spec.md5} (a different or damaged file)")


def checkpoint_bytes(spec: PublishedCheckpoint, *, allow_download: bool = True, log=print) -> bytes:
    """The checkpoint's bytes, checked against its size and md5 (downloaded into place when absent)."""
    path = spec.weights_path()
    if path.exists():
        data = path.read_bytes()
        _check(spec, data, str(path))
        return data
    if not allow_download:
        raise FileNotFoundError(f"checkpoint {spec.name!r}: {path} is missing (download it from {spec.url})")
    log(f"checkpoint {spec.name!r}: {path} is missing; downloading {spec.url}")
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise FileNotFoundError(f"checkpoint {spec.name!r}: {path} is missing and {spec.url} cannot be "
                                f"downloaded here ({e}); place the file there by hand") from None
    _check(spec, data, spec.url)
    atomic_write_bytes(path, data)
    return data


def _mapped_state(spec: PublishedCheckpoint, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        prefix, _, rest = key.partition(".")
        if prefix not in spec.key_map:
            raise ConfigError(f"checkpoint {spec.name!r}: its key {key!r} has no entry in key_map "
                              f"({', '.join(sorted(spec.key_map))})")
        out[f"{spec.key_map[prefix]}.{rest}"] = value
    return out


def published_model(spec: PublishedCheckpoint, data: bytes | None = None) -> nn.Sequential:
    """The harness model holding the checkpoint's weights (eval mode, float32).

    Every tensor of the file must land on a parameter of the architecture and every parameter must be
    set by one (strict loading); the Normalize layer takes the description's mean and std.
    """
    info = get_info(spec.dataset)
    model = build_model(spec.arch, info.in_shape, info.num_classes, spec.mean, spec.std, spec.width)
    state = torch.load(io.BytesIO(data if data is not None else checkpoint_bytes(spec)), map_location="cpu",
                       weights_only=True)
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {spec.name!r}: expected a state_dict, got {type(state).__name__}")
    mapped = _mapped_state(spec, state)
    own = model.state_dict()
    buffers = {k: v for k, v in own.items() if k not in dict(model.named_parameters())}
    missing = sorted(set(dict(model.named_parameters())) - set(mapped))
    extra = sorted(set(mapped) - set(own))
    if missing or extra:
        raise ConfigError(f"checkpoint {spec.name!r} does not fit architecture {spec.arch!r}: "
                          f"missing {missing}, unexpected {extra}")
    model.load_state_dict({**buffers, **mapped}, strict=True)
    return model.eval()


def import_checkpoint(cfg: RunConfig, runs_root: Path | None = None, *, allow_download: bool = True,
                      log=print) -> RunDir:
    """The finished run folder of a published checkpoint (written once; a finished one is kept)."""
    if cfg.checkpoint is None:
        raise ValueError(f"run {cfg.run_id} names no checkpoint")
    run = RunDir.of(cfg, runs_root or RUNS)
    if run.finished:
        log(f"[{cfg.run_id}] loaded earlier; nothing to do")
        return run
    spec = load_checkpoint_spec(cfg.checkpoint)
    data = checkpoint_bytes(spec, allow_download=allow_download, log=log)
    model = published_model(spec, data)
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.config, cfg.to_dict())
    # the published weights are the run's final model: recorded as its last epoch, which is what
    # load_model asks of a finished run (a checkpoint of an earlier epoch is never a final model)
    save_checkpoint(run, {"model": model.state_dict(), "epoch": cfg.epochs, "published": spec.name})
    write_json(run.manifest, {
        "run_id": cfg.run_id, "status": "finished", "origin": "published checkpoint", "trained": False,
        "checkpoint": {"name": spec.name, "file": str(spec.weights_path().name), "md5": spec.md5,
                       "size_bytes": spec.size_bytes, "url": spec.url, "repository": spec.repository,
                       "commit": spec.commit, "path": spec.path, "licence": spec.licence,
                       "key_map": spec.key_map, "arch": spec.arch, "mean": list(spec.mean), "std": list(spec.std)},
        "train_time_s": 0.0, "started": now(), "finished": now(), "git_commit": git_commit(),
        "versions": versions(), "seed": cfg.seed})
    log(f"[{cfg.run_id}] loaded published checkpoint {spec.name!r} (md5 {spec.md5}); not trained")
    return run
