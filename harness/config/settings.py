"""Run and evaluation settings as typed data: a run's config (and its id), certification and SLURM settings.

A :class:`RunConfig` is everything that determines a trained model. Its id is a readable prefix
plus a hash of the resolved config, so an unchanged run is never redone and a changed one never
reuses stale results. The device is deliberately not part of the id: a run started on one device
may be resumed on another. What each field accepts is in the annotations below (see
:mod:`harness.config.constraints`); :mod:`harness.config.schema` turns them into the validating models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, create_model, field_validator

from harness.config.checkpoints import CheckpointName, load_checkpoint_spec
from harness.config.constraints import (
    AtLeastOne,
    AttackSteps,
    ConfigError,
    Count,
    NonNegative,
    PixelEps,
    Positive,
    Seed,
)
from harness.config.methods import METHOD_PARAMS, method_defaults
from harness.config.schema import STRICT, model_of, params_model, read_toml_or_json, validate
from harness.data import DATASETS
from harness.models import ARCHITECTURES
from harness.schedules import EPS_SCHEDULES

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
RUNS = REPO / "runs"

DatasetName = Literal[tuple(DATASETS)]
MethodName = Literal[tuple(METHOD_PARAMS)]
ArchName = Literal[tuple(ARCHITECTURES)]
EpsSchedule = Literal[EPS_SCHEDULES]

__all__ = ["BENCHMARKS", "REPO", "RUNS", "CertifySettings", "ConfigError", "PLANNED_FIELDS", "RunConfig", "SlurmSettings",
           "load_run_config", "methods_table_model", "run_config_model", "run_options_model"]


@dataclass(frozen=True)
class RunConfig:
    """One fully resolved training run."""

    dataset: DatasetName
    eps: PixelEps                   # the eps the model is evaluated (certified) at
    method: MethodName
    params: dict[str, Any] = field(default_factory=dict)   # method parameters, defaults filled in
    arch: ArchName = "cnn_small"
    width: AtLeastOne | None = None  # the architecture's width multiplier (None: its default)
    init: Literal["default", "ibp"] = "default"   # "ibp": Shi et al.'s initialisation
    seed: Seed = 0
    epochs: AtLeastOne = 1
    batch_size: AtLeastOne = 128
    lr: Positive = 5e-4
    lr_milestones: tuple[AtLeastOne, ...] = ()  # epochs after which lr is multiplied by lr_decay
    lr_decay: Positive = 0.2
    grad_clip: NonNegative = 10.0   # max gradient norm; 0 = no clipping
    l1: NonNegative = 0.0           # L1 penalty on Conv/Linear weights (MTL-IBP's published settings)
    train_eps_factor: Positive = 1.0  # training eps = factor * eps (e.g. 2 for MNIST 0.1, CC-IBP)
    eps_schedule: EpsSchedule = "smoothed"
    eps_ramp_start: NonNegative = 0.0   # epochs
    eps_ramp_length: NonNegative = 1.0  # epochs
    train_subset: Count = 0         # first N training images (0 = all but the validation slice)
    val_size: Count = 1000          # held-out slice at the end of the training set
    val_pgd_steps: AttackSteps = 10
    teacher: str | None = None      # run id of the PGD teacher (AD-CERT)
    # A published checkpoint (benchmarks/checkpoints/<name>.toml) loaded instead of training; needs
    # method "published" and the checkpoint's dataset and arch. The training fields are then unused.
    checkpoint: CheckpointName | None = None

    @property
    def train_eps(self) -> float:
        return self.eps * self.train_eps_factor

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        if d["checkpoint"] is None:
            del d["checkpoint"]  # absent, so that the ids of trained runs stay what they were
        return d

    @property
    def run_id(self) -> str:
        if self.checkpoint is not None:
            # the checkpoint's identity (bytes and how they are loaded) and the eps it is certified at
            spec = load_checkpoint_spec(self.checkpoint)
            blob = json.dumps({"checkpoint": spec.identity(), "dataset": self.dataset, "eps": self.eps},
                              sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
            return f"{self.dataset}-{self.eps:g}-published-{self.checkpoint}-{digest}"
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"{self.dataset}-{self.eps:g}-{self.method}-{self.arch}-s{self.seed}-{digest}"

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "run config") -> "RunConfig":
        """Validate plain data (a TOML / JSON table) into a run config; ConfigError names ``source``."""
        data = validate(run_config_model(), d, source).model_dump()
        method = data["method"]
        params = validate(params_model(METHOD_PARAMS[method]), data["params"], source,
                          at=("params",)).model_dump(exclude_unset=True)
        data["params"] = {**method_defaults(method), **params}
        data["lr_milestones"] = tuple(data["lr_milestones"])
        cfg = cls(**data)
        needs = METHOD_PARAMS[method].needs_teacher
        if needs and not cfg.teacher:
            raise ConfigError(f"{source}: teacher: {method} needs a teacher: set 'teacher' to the run id of a "
                              f"finished pgd run")
        if cfg.teacher and not needs:
            raise ConfigError(f"{source}: teacher = {cfg.teacher!r}: {method} does not use a teacher; remove it")
        if (method == "published") != (cfg.checkpoint is not None):
            raise ConfigError(f"{source}: checkpoint: method 'published' and a checkpoint go together (method "
                              f"{method!r}, checkpoint {cfg.checkpoint!r})")
        if cfg.checkpoint is not None:
            spec = load_checkpoint_spec(cfg.checkpoint)
            for key in ("dataset", "arch", "width"):
                if getattr(cfg, key) != getattr(spec, key):
                    raise ConfigError(f"{source}: {key}: checkpoint {cfg.checkpoint!r} is a {key} "
                                      f"{getattr(spec, key)!r} model, the config says {getattr(cfg, key)!r}")
        return cfg


def load_run_config(path: Path) -> RunConfig:
    """A run config file (TOML, or JSON by its suffix), validated."""
    return RunConfig.from_dict(read_toml_or_json(path, "run config"), source=str(path))


#: RunConfig fields the plan sets (a profile's [defaults] and settings may set every other one).
PLANNED_FIELDS = ("dataset", "eps", "method", "params", "seed", "teacher")


# ---- certification and scheduler settings ------------------------------------------------------------

@dataclass(frozen=True)
class CertifySettings:
    """How a run is evaluated (a profile's ``[certify]`` table)."""

    n_test: AtLeastOne = 10000      # test prefix for clean / PGD / IBP / CROWN-IBP
    # Budgets of the expensive stages: how many undecided samples each may process, in index order
    # (0: the stage does not run). See harness.certification.run.
    crown_samples: Count = 0
    alpha_crown_samples: Count = 0
    autoattack_samples: Count = 0        # AutoAttack (standard version) on undecided samples
    autoattack_certified_check: Count = 0  # certified samples attacked as a soundness alarm
    autoattack_batch_size: AtLeastOne = 250
    complete_samples: Count = 0          # complete verification (MILP, HiGHS) of undecided samples
    complete_node_limit: AtLeastOne = 10000   # branch-and-bound nodes per sample (deterministic)
    complete_time_limit_s: Positive = 60.0    # wall-clock safety cap per sample (machine-dependent when hit)
    complete_max_unstable: Count = 0     # skip (as unknown) a sample with more unstable ReLUs than this (0: none)
    pgd_steps: AttackSteps = 50
    pgd_restarts: AttackSteps = 2
    batch_size: AtLeastOne = 500
    crown_batch_size: AtLeastOne = 32
    alpha_iterations: AtLeastOne = 20
    alpha_lr: Positive = 0.1
    eps_sweep: tuple[Positive, ...] = ()   # fractions of eps for the certified-vs-eps curve (own IBP)
    n_sweep: Count = 1000
    # Wong & Kolter's LP dual (certifier "lp-dual") on every sample, beside the cascade: its own verdict
    # column, never counted as a certificate of the cascade (to compare with published LP-dual numbers).
    lp_dual: bool = False
    # Complete stage: a sample the MILP leaves unknown after this many seconds (0: never) is tried again
    # with its ReLU bounds tightened by LP first (harness.bounds.tighten), within complete_time_limit_s.
    complete_tighten_after_s: NonNegative = 0.0
    # PGD on every correctly classified sample (true), or only on those no full-test-set certifier has
    # certified (false: a certified sample cannot be broken, so the PGD column means the same; the cost
    # of PGD falls with the certified fraction). See harness.certification.cascade.Cascade.pgd.
    pgd_on_certified: bool = True
    # Worker processes of the complete stage, one thread each, on top of the run's own process (which
    # waits meanwhile): a profile with a single run to certify (fidelity) gives its MILP every core.
    complete_jobs: AtLeastOne = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "[certify]") -> "CertifySettings":
        data = validate(model_of(cls, "certify"), d, source).model_dump()
        data["eps_sweep"] = tuple(data["eps_sweep"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eps_sweep"] = list(self.eps_sweep)
        for k, default in _LATER_CERTIFY_FIELDS.items():
            if d[k] == default:
                del d[k]  # fields added later are absent at their default: the keys of earlier settings stay
        return d

    @property
    def key(self) -> str:
        """A short hash of the settings: a run certified under several profiles' settings keeps each
        certification in its own files (``certify-<key>.csv``)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


#: CertifySettings fields added after certifications were recorded, with their defaults.
_LATER_CERTIFY_FIELDS: dict[str, Any] = {"lp_dual": False, "complete_tighten_after_s": 0.0,
                                         "pgd_on_certified": True, "complete_jobs": 1}


@dataclass(frozen=True)
class SlurmSettings:
    """Resources of each run's SLURM job (a profile's ``[slurm]`` table; command-line options override)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: Count = 0
    cpus_per_task: AtLeastOne = 2
    mem_gb: Positive | None = None
    timeout_min: AtLeastOne = 24 * 60
    max_requeues: Count = 5         # how often a timed-out or pre-empted job is requeued

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- the run config file format ----------------------------------------------------------------------

@cache
def run_config_model() -> type[BaseModel]:
    """A run config file (``python -m harness train RUN.toml``): every RunConfig field."""
    class _Run(BaseModel):
        model_config = STRICT

        @field_validator("lr_milestones", check_fields=False)
        @classmethod
        def _ascending(cls, v):
            if v is not None and list(v) != sorted(set(v)):
                raise ValueError("lr_milestones must be strictly increasing epochs")
            return v

    return model_of(RunConfig, "run_config", base=_Run)


@cache
def run_options_model() -> type[BaseModel]:
    """RunConfig fields a profile's ``[defaults]`` or one of its settings may set (all optional)."""
    return model_of(RunConfig, "run_options", exclude=PLANNED_FIELDS, optional=True, base=run_config_model().__base__)


@cache
def methods_table_model(sweep: bool) -> type[BaseModel]:
    """``[methods.<name>]`` / ``methods_params.<name>``: one optional parameter table per method."""
    fields = {m: (params_model(c, sweep) | None, None) for m, c in METHOD_PARAMS.items()}
    return create_model("methods_sweep" if sweep else "methods", __config__=STRICT, **fields)
