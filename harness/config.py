"""Configuration as data: benchmark profiles (TOML under benchmarks/) resolved once into typed runs.

A :class:`RunConfig` is everything that determines a trained model. Its id is a readable prefix
plus a hash of the resolved config, so an unchanged run is never redone and a changed one never
reuses stale results. The device is deliberately not part of the id: a run started on one device
may be resumed on another.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.methods import METHODS, method_defaults, make_method
from harness.models import ARCHITECTURES
from harness.schedules import EPS_SCHEDULES

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
RUNS = REPO / "runs"


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the key and the valid choices."""


@dataclass(frozen=True)
class RunConfig:
    """One fully resolved training run."""

    dataset: str
    eps: float                      # the eps the model is evaluated (certified) at
    method: str
    params: dict[str, Any] = field(default_factory=dict)   # method parameters, defaults filled in
    arch: str = "cnn_small"
    width: int | None = None
    init: str = "default"           # "default" | "ibp" (Shi et al.)
    seed: int = 0
    epochs: int = 1
    batch_size: int = 128
    lr: float = 5e-4
    lr_milestones: tuple[int, ...] = ()
    lr_decay: float = 0.2
    grad_clip: float = 10.0
    l1: float = 0.0                 # L1 penalty on Conv/Linear weights (MTL-IBP's published settings)
    train_eps_factor: float = 1.0   # training eps = factor * eps (e.g. 2 for MNIST 0.1, CC-IBP)
    eps_schedule: str = "smoothed"
    eps_ramp_start: float = 0.0     # epochs
    eps_ramp_length: float = 1.0    # epochs
    train_subset: int = 0           # first N training images (0 = all but the validation slice)
    val_size: int = 1000            # held-out slice at the end of the training set
    val_pgd_steps: int = 10
    teacher: str | None = None      # run id of the PGD teacher (AD-CERT)

    @property
    def train_eps(self) -> float:
        return self.eps * self.train_eps_factor

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        return f"{self.dataset}-{self.eps:g}-{self.method}-{self.arch}-s{self.seed}-{digest}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Build and validate a run config from plain data (a TOML/JSON table)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown run config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for key in ("dataset", "eps", "method"):
            if key not in d:
                raise ConfigError(f"run config is missing {key!r}")
        d = dict(d)
        for f in fields(cls):  # 0 and 0.0 must give the same run id
            if f.name in d and f.type in ("float", "int") and isinstance(d[f.name], (int, float)) \
                    and not isinstance(d[f.name], bool):
                d[f.name] = float(d[f.name]) if f.type == "float" else int(d[f.name])
        d["lr_milestones"] = tuple(int(m) for m in d.get("lr_milestones", ()))
        d["params"] = {**method_defaults_checked(d["method"]), **dict(d.get("params", {}))}
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError for anything that cannot be trained, before any work is done."""
        from harness.data import DATASETS  # late: data imports torchvision

        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.arch!r}; known: {', '.join(ARCHITECTURES)}")
        if not self.eps >= 0:
            raise ConfigError(f"eps must be >= 0, got {self.eps}")
        if not self.train_eps_factor > 0:
            raise ConfigError(f"train_eps_factor must be > 0, got {self.train_eps_factor}")
        if self.eps_schedule not in EPS_SCHEDULES:
            raise ConfigError(f"unknown eps_schedule {self.eps_schedule!r}; known: {', '.join(EPS_SCHEDULES)}")
        if self.init not in ("default", "ibp"):
            raise ConfigError(f"unknown init {self.init!r}; known: default, ibp")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.l1 < 0:
            raise ConfigError(f"l1 must be >= 0, got {self.l1}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        try:
            make_method(self.method, self.params)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if METHODS[self.method].needs_teacher and not self.teacher:
            raise ConfigError(f"{self.method} needs a teacher: set 'teacher' to the run id of a finished pgd run")


def method_defaults_checked(name: str) -> dict[str, Any]:
    try:
        return method_defaults(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# ---- profiles -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One (dataset, eps) cell of a profile with its run options."""

    dataset: str
    eps: float
    eps_label: str
    methods: tuple[str, ...]
    run: dict[str, Any]                     # RunConfig fields shared by the methods of this setting
    method_params: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Profile:
    """A benchmark profile: what to train, how to certify, where results go."""

    name: str
    description: str
    seeds: tuple[int, ...]
    settings: tuple[Setting, ...]
    certify: dict[str, Any]
    path: Path | None = None

    def runs(self) -> list[RunConfig]:
        """Every run of the profile, teachers (pgd) before the students that need them."""
        out: list[RunConfig] = []
        for s in self.settings:
            for seed in self.seeds:
                base = {"dataset": s.dataset, "eps": s.eps, "seed": seed, **s.run}
                teacher_id = None
                ordered = sorted(s.methods, key=lambda m: (METHODS[m].needs_teacher, s.methods.index(m)))
                for m in ordered:
                    d = {**base, "method": m, "params": s.method_params.get(m, {})}
                    if METHODS[m].uses_ibp_init:  # Shi et al. init unless the profile says otherwise
                        d.setdefault("init", "ibp")
                    if METHODS[m].needs_teacher:
                        if teacher_id is None:
                            raise ConfigError(f"profile {self.name}: {s.dataset} eps {s.eps_label} lists {m} but no "
                                              f"pgd teacher; add 'pgd' to its methods")
                        d["teacher"] = teacher_id
                    cfg = RunConfig.from_dict(d)
                    if m == "pgd":
                        teacher_id = cfg.run_id
                    out.append(cfg)
        return out


def _eps_value(v: Any) -> tuple[float, str]:
    """Accept 0.3 or "8/255"; keep the label for tables."""
    if isinstance(v, str) and "/" in v:
        num, den = v.split("/")
        return float(num) / float(den), v
    return float(v), f"{float(v):g}"


def load_profile(name_or_path: str | Path) -> Profile:
    """Load ``benchmarks/<name>.toml`` (or a path) into a validated :class:`Profile`."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BENCHMARKS / f"{name_or_path}.toml"
    if not path.exists():
        known = sorted(p.stem for p in BENCHMARKS.glob("*.toml"))
        raise ConfigError(f"no profile {str(name_or_path)!r} ({path} does not exist); known: {', '.join(known)}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    defaults = raw.get("defaults", {})
    method_params = raw.get("methods", {})
    for m in method_params:
        if m not in METHODS:
            raise ConfigError(f"{path}: [methods.{m}]: unknown method; known: {', '.join(METHODS)}")
    settings = []
    for i, s in enumerate(raw.get("settings", [])):
        s = dict(s)
        try:
            eps, label = _eps_value(s.pop("eps"))
            dataset = s.pop("dataset")
            methods = tuple(s.pop("methods"))
        except KeyError as e:
            raise ConfigError(f"{path}: settings[{i}] is missing {e}") from None
        for m in methods:
            if m not in METHODS:
                raise ConfigError(f"{path}: settings[{i}]: unknown method {m!r}; known: {', '.join(METHODS)}")
        overrides = s.pop("methods_params", {})
        params = {m: {**method_params.get(m, {}), **overrides.get(m, {})} for m in methods}
        settings.append(Setting(dataset, eps, label, methods, {**defaults, **s}, params))
    prof = raw.get("profile", {})
    profile = Profile(
        name=prof.get("name", path.stem), description=prof.get("description", ""),
        seeds=tuple(prof.get("seeds", [0])), settings=tuple(settings), certify=raw.get("certify", {}),
        path=path,
    )
    profile.runs()  # validate every run now, before any work
    return profile

