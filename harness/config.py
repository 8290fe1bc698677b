"""Configuration as data: run configs and profiles, validated once into typed objects, and the plan.

A :class:`RunConfig` is everything that determines a trained model. Its id is a readable prefix
plus a hash of the resolved config, so an unchanged run is never redone and a changed one never
reuses stale results. The device is deliberately not part of the id: a run started on one device
may be resumed on another.

A :class:`Profile` (``benchmarks/<name>.toml`` or any path) says what to train and how to certify.
Its :meth:`Profile.plan` expands settings x seeds x methods, method parameters given as lists
(sweeps: one run per value) and AD-CERT ablations into :class:`PlannedRun` s, teachers first. What
each field accepts is in the annotations below (see :mod:`harness.constraints`); :mod:`harness.schema`
turns them into the validating models, so nothing is run or written before the whole file is valid.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.constraints import AtLeastOne, AttackSteps, Count, NonNegative, PixelEps, Positive, Seed
from harness.data import DATASETS
from harness.methods import METHODS, method_defaults
from harness.models import ARCHITECTURES
from harness.schedules import EPS_SCHEDULES
from harness.schema import (ConfigError, eps_value, profile_model, read_toml_or_json, run_config_model,
                            validate)

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
RUNS = REPO / "runs"

DatasetName = Literal[tuple(DATASETS)]
MethodName = Literal[tuple(METHODS)]
ArchName = Literal[tuple(ARCHITECTURES)]
EpsSchedule = Literal[EPS_SCHEDULES]

__all__ = ["BENCHMARKS", "REPO", "RUNS", "CertifySettings", "ConfigError", "PlannedRun", "Profile", "RunConfig",
           "Setting", "SlurmSettings", "load_any", "load_profile", "load_run_config"]


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
    def from_dict(cls, d: dict[str, Any], source: str = "run config") -> "RunConfig":
        """Validate plain data (a TOML / JSON table) into a run config; ConfigError names ``source``."""
        data = validate(run_config_model(), d, source).model_dump()
        method = data["method"]
        params = validate(_params_model(method), data["params"], source, at=("params",)).model_dump(exclude_unset=True)
        data["params"] = {**method_defaults(method), **params}
        data["lr_milestones"] = tuple(data["lr_milestones"])
        cfg = cls(**data)
        needs = METHODS[method].needs_teacher
        if needs and not cfg.teacher:
            raise ConfigError(f"{source}: teacher: {method} needs a teacher: set 'teacher' to the run id of a "
                              f"finished pgd run")
        if cfg.teacher and not needs:
            raise ConfigError(f"{source}: teacher = {cfg.teacher!r}: {method} does not use a teacher; remove it")
        return cfg

    def validate(self) -> None:
        """Raise ConfigError for anything that cannot be trained, before any work is done."""
        RunConfig.from_dict(self.to_dict())


def _params_model(method: str):
    from harness.schema import method_params_model

    return method_params_model(method)


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
    # (0: the stage does not run). See harness.certify.
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

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "[certify]") -> "CertifySettings":
        from harness.schema import model_of

        data = validate(model_of(cls, "certify"), d, source).model_dump()
        data["eps_sweep"] = tuple(data["eps_sweep"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eps_sweep"] = list(self.eps_sweep)
        return d

    @property
    def key(self) -> str:
        """A short hash of the settings: a run certified under several profiles' settings keeps each
        certification in its own files (``certify-<key>.csv``)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


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


# ---- profiles ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One (dataset, eps) cell of a profile with its run options."""

    dataset: str
    eps: float
    eps_label: str
    methods: tuple[str, ...]
    run: dict[str, Any]                     # RunConfig fields shared by the methods of this setting
    method_params: dict[str, dict[str, Any]]   # values may be lists: a sweep
    certify: CertifySettings | None = None  # the profile's [certify] with this setting's own values (None: as is)


@dataclass(frozen=True)
class AblationVariant:
    """An AD-CERT variant compared, seed by seed, with the base AD-CERT run of the same setting."""

    name: str
    params: dict[str, Any]          # ad_cert parameters replacing the base's
    teacher: dict[str, Any]         # RunConfig fields of its own PGD teacher (empty: the setting's teacher)
    teacher_params: dict[str, Any]  # pgd parameters of that teacher


@dataclass(frozen=True)
class Ablations:
    base: dict[str, Any]            # ad_cert parameters that pick the base run (e.g. the sweep's alpha)
    variants: tuple[AblationVariant, ...]
    seeds: tuple[int, ...] | None = None   # the seeds the variants run with (None: every seed of the profile)


@dataclass(frozen=True)
class PlannedRun:
    """A run of the plan with what it is for: its setting, its swept values, its ablation."""

    cfg: RunConfig
    setting: Setting
    sweep: tuple[tuple[str, Any], ...] = ()   # (parameter, value) of the swept parameters, in order
    ablation: str | None = None               # the ablation variant it runs (None: a sweep or plain run)
    teacher_of: str | None = None             # "ablation <name>": a teacher trained for that variant only

    @property
    def run_id(self) -> str:
        return self.cfg.run_id

    @property
    def variant(self) -> str:
        """A short label that tells this run from the others of its (setting, method, seed)."""
        if self.teacher_of:
            return f"teacher of {self.teacher_of}"
        if self.ablation:
            return f"ablation {self.ablation}"
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.sweep)


@dataclass(frozen=True)
class Profile:
    """A benchmark profile: what to train, how to certify, where it came from."""

    name: str
    description: str
    seeds: tuple[int, ...]
    settings: tuple[Setting, ...]
    certify: CertifySettings
    slurm: SlurmSettings = SlurmSettings()
    ablations: Ablations | None = None
    path: Path | None = None

    def plan(self) -> list[PlannedRun]:
        """Every run of the profile once, each teacher before the students that need it."""
        out: dict[str, PlannedRun] = {}
        for s in self.settings:
            for seed in self.seeds:
                for p in _setting_plan(self, s, seed):
                    out.setdefault(p.run_id, p)
        return list(out.values())

    def runs(self) -> list[RunConfig]:
        """The run configs of :meth:`plan`, in its order."""
        return [p.cfg for p in self.plan()]

    def certify_for(self, which: "PlannedRun | Setting | str") -> CertifySettings:
        """How a run of this profile is certified: its setting's ``certify`` table over ``[certify]``.

        ``which``: a planned run, a setting, or a run id (a run not in the plan gets ``[certify]``).
        """
        if isinstance(which, str):
            which = next((p for p in self.plan() if p.run_id == which), None)
        setting = which.setting if isinstance(which, PlannedRun) else which
        return setting.certify if setting is not None and setting.certify is not None else self.certify


def _expand(params: dict[str, Any]) -> list[tuple[dict[str, Any], tuple[tuple[str, Any], ...]]]:
    """Every combination of the list-valued (swept) parameters: (params, swept values)."""
    swept = [k for k, v in params.items() if isinstance(v, list)]
    combos = []
    for values in itertools.product(*(params[k] for k in swept)):
        combos.append(({**params, **dict(zip(swept, values))}, tuple(zip(swept, values))))
    return combos


def _setting_plan(profile: Profile, s: Setting, seed: int) -> list[PlannedRun]:
    where = f"{profile.path or profile.name}: settings[{profile.settings.index(s)}]"
    base = {"dataset": s.dataset, "eps": s.eps, "seed": seed, **s.run}

    def config(method: str, params: dict[str, Any], run: dict[str, Any] | None = None,
               teacher: str | None = None) -> RunConfig:
        d = {**base, **(run or {}), "method": method, "params": params}
        if METHODS[method].uses_ibp_init:  # Shi et al. init unless the profile says otherwise
            d.setdefault("init", "ibp")
        if teacher is not None:
            d["teacher"] = teacher
        return RunConfig.from_dict(d, source=where)

    plan: list[PlannedRun] = []
    teacher_id = None
    ordered = sorted(s.methods, key=lambda m: (METHODS[m].needs_teacher, s.methods.index(m)))
    for m in ordered:
        combos = _expand(s.method_params.get(m, {}))
        if m == "pgd" and len(combos) > 1 and any(METHODS[x].needs_teacher for x in s.methods):
            raise ConfigError(f"{where}: pgd parameters are swept, but {m} is the teacher of this setting and "
                              f"must be one run; give teacher variants as [[ablations.variants]] instead")
        if METHODS[m].needs_teacher and teacher_id is None:
            raise ConfigError(f"{where}: {s.dataset} eps {s.eps_label} lists {m} but no pgd teacher; "
                              f"add 'pgd' to its methods")
        for params, swept in combos:
            cfg = config(m, params, teacher=teacher_id if METHODS[m].needs_teacher else None)
            if m == "pgd":
                teacher_id = cfg.run_id
            plan.append(PlannedRun(cfg, s, swept))
    ablations = profile.ablations
    if ablations is not None and "ad_cert" in s.methods and (ablations.seeds is None or seed in ablations.seeds):
        ad = s.method_params.get("ad_cert", {})
        base_params = {**ad, **ablations.base}
        unset = [k for k, v in base_params.items() if isinstance(v, list)]
        if unset:
            raise ConfigError(f"{where}: ablations.base must fix the swept ad_cert parameter(s) {', '.join(unset)}")
        base_run = config("ad_cert", base_params, teacher=teacher_id)
        plan.append(PlannedRun(base_run, s, tuple((k, ablations.base[k]) for k in ablations.base
                                                  if isinstance(ad.get(k), list))))
        for v in ablations.variants:
            teacher = teacher_id
            if v.teacher or v.teacher_params:
                pgd = s.method_params.get("pgd", {})
                t = config("pgd", {**pgd, **v.teacher_params}, run=v.teacher)
                plan.append(PlannedRun(t, s, teacher_of=f"ablation {v.name}"))
                teacher = t.run_id
            plan.append(PlannedRun(config("ad_cert", {**base_params, **v.params}, teacher=teacher), s,
                                   ablation=v.name))
    return plan


def load_profile(name_or_path: str | Path) -> Profile:
    """Load ``benchmarks/<name>.toml`` or a profile file anywhere into a validated :class:`Profile`.

    Every run of the plan is validated too, so a profile that loads can be run to the end.
    """
    text = str(name_or_path)
    path = Path(name_or_path)
    if path.suffix == "" and "/" not in text and not path.exists():
        path = BENCHMARKS / f"{text}.toml"
        if not path.exists():
            known = sorted(p.stem for p in BENCHMARKS.glob("*.toml"))
            raise ConfigError(f"no profile {text!r} ({path.relative_to(REPO)} does not exist); known: "
                              f"{', '.join(known)}; or give the path of a profile file")
    raw = validate(profile_model(), read_toml_or_json(path, "profile"), str(path))
    data = raw.model_dump(exclude_unset=True)
    defaults = data.get("defaults", {})
    methods_table = data.get("methods", {})
    certify = CertifySettings.from_dict(data.get("certify", {}), f"{path}: certify")
    settings = []
    for i, s in enumerate(data["settings"]):
        s = dict(s)
        eps = s.pop("eps")
        label = eps if isinstance(eps, str) else f"{float(eps):g}"
        dataset, methods = s.pop("dataset"), tuple(s.pop("methods"))
        overrides = s.pop("methods_params", {})
        params = {m: {**methods_table.get(m, {}), **overrides.get(m, {})} for m in methods}
        own = s.pop("certify", {})  # only the keys the setting sets; [certify] gives the others
        cert = CertifySettings.from_dict({**data.get("certify", {}), **own}, f"{path}: settings[{i}].certify") \
            if own else certify
        settings.append(Setting(dataset, eps_value(eps), label.replace(" ", ""), methods, {**defaults, **s}, params,
                                cert))
    meta = data.get("profile", {})
    ablations = None
    if "ablations" in data:
        a = data["ablations"]
        ablations = Ablations(a["base"], tuple(AblationVariant(v["name"], v.get("params", {}), v.get("teacher", {}),
                                                               v.get("teacher_params", {})) for v in a["variants"]),
                              tuple(a["seeds"]) if a.get("seeds") else None)
        seeds = tuple(meta.get("seeds", [0]))
        if ablations.seeds is not None and not set(ablations.seeds) <= set(seeds):
            raise ConfigError(f"{path}: ablations.seeds: {sorted(set(ablations.seeds) - set(seeds))} not among the "
                              f"profile's seeds {list(seeds)}; pick ablation seeds from [profile] seeds")
        names = [v.name for v in ablations.variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: ablations.variants: names must not repeat")
    profile = Profile(
        name=meta.get("name", path.stem), description=meta.get("description", ""),
        seeds=tuple(meta.get("seeds", [0])), settings=tuple(settings), certify=certify,
        slurm=SlurmSettings(**data.get("slurm", {})), ablations=ablations, path=path.resolve(),
    )
    profile.plan()  # validate every run now, before any work
    return profile


def load_any(name_or_path: str | Path) -> tuple[str, Profile | RunConfig]:
    """A profile (by name or path) or a run config file, told apart by their keys: ("profile", p) or
    ("run config", cfg)."""
    text = str(name_or_path)
    path = Path(name_or_path)
    if path.suffix == "" and "/" not in text and not path.exists():
        return "profile", load_profile(text)
    data = read_toml_or_json(path, "profile or run config")
    if "settings" in data or "profile" in data:
        return "profile", load_profile(path)
    if "dataset" in data or "method" in data:
        return "run config", load_run_config(path)
    raise ConfigError(f"{path}: neither a profile (no [[settings]]) nor a run config (no dataset, eps, method); "
                      f"see `python -m harness check --schema`")
