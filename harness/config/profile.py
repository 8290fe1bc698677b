"""Profiles and the plan: what to train and how to certify, expanded once into the runs of an invocation.

A :class:`Profile` (``benchmarks/<name>.toml`` or any path) says what to train and how to certify.
:meth:`Profile.plan` expands settings x seeds x methods, method parameters given as lists (sweeps:
one run per value) and AD-CERT ablations into :class:`PlannedRun` s, teachers first; the plan is
built and validated once, when the profile is loaded, so nothing is run or written before the
whole file is valid, and every later use reads the same plan.
"""

from __future__ import annotations

import itertools
import typing
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, create_model, field_validator

from harness.config.constraints import ConfigError
from harness.config.methods import METHOD_PARAMS, ADCERTParams, PGDParams
from harness.config.schema import FRACTION, STRICT, eps_value, model_of, params_model, read_toml_or_json, validate
from harness.config.settings import (
    BENCHMARKS,
    REPO,
    CertifySettings,
    RunConfig,
    SlurmSettings,
    load_run_config,
    methods_table_model,
    run_config_model,
    run_options_model,
)
from harness.data import get_info

__all__ = ["Ablations", "AblationVariant", "PlannedRun", "Profile", "Setting", "json_schemas", "load_any",
           "load_profile", "profile_model"]


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

    @cached_property
    def _plan(self) -> tuple[PlannedRun, ...]:
        # Built (and every run validated) once per profile object; frozen dataclasses allow this cache.
        out: dict[str, PlannedRun] = {}
        for s in self.settings:
            for seed in self.seeds:
                for p in _setting_plan(self, s, seed):
                    out.setdefault(p.run_id, p)
        return tuple(out.values())

    def plan(self) -> list[PlannedRun]:
        """Every run of the profile once, each teacher before the students that need it."""
        return list(self._plan)

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
        if METHOD_PARAMS[method].uses_ibp_init:  # Shi et al. init unless the profile says otherwise
            d.setdefault("init", "ibp")
        if teacher is not None:
            d["teacher"] = teacher
        return RunConfig.from_dict(d, source=where)

    plan: list[PlannedRun] = []
    teacher_id = None
    ordered = sorted(s.methods, key=lambda m: (METHOD_PARAMS[m].needs_teacher, s.methods.index(m)))
    for m in ordered:
        combos = _expand(s.method_params.get(m, {}))
        if m == "pgd" and len(combos) > 1 and any(METHOD_PARAMS[x].needs_teacher for x in s.methods):
            raise ConfigError(f"{where}: pgd parameters are swept, but {m} is the teacher of this setting and "
                              f"must be one run; give teacher variants as [[ablations.variants]] instead")
        if METHOD_PARAMS[m].needs_teacher and teacher_id is None:
            raise ConfigError(f"{where}: {s.dataset} eps {s.eps_label} lists {m} but no pgd teacher; "
                              f"add 'pgd' to its methods")
        for params, swept in combos:
            cfg = config(m, params, teacher=teacher_id if METHOD_PARAMS[m].needs_teacher else None)
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
            if own else None  # None: the profile's [certify] (Profile.certify_for), even after a replace()
        settings.append(Setting(dataset, eps_value(eps), label.replace(" ", ""), methods, {**defaults, **s}, params,
                                cert))
        _check_setting(path, data["settings"], i, own, cert or certify)
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
    profile.plan()  # build and validate every run now, before any work
    return profile


def _check_setting(path: Path, raw: list[dict[str, Any]], i: int, own: dict[str, Any], cert: CertifySettings) -> None:
    """Refuse what the schema cannot see in one setting: a repeat of an earlier one, and a test prefix
    longer than the dataset's test set (which would run, certifying fewer samples than the tables say)."""
    for j in range(i):
        if raw[j] == raw[i]:
            raise ConfigError(f"{path}: settings[{i}] repeats settings[{j}] verbatim; remove one of them")
    dataset = raw[i]["dataset"]
    size = get_info(dataset).test_size
    if cert.n_test > size:
        where = f"settings[{i}].certify.n_test" if "n_test" in own else f"certify.n_test (settings[{i}], {dataset})"
        raise ConfigError(f"{path}: {where} = {cert.n_test} is larger than the {dataset} test set ({size} images); "
                          f"set n_test to at most {size}")


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


# ---- the profile file format ----------------------------------------------------------------------

@cache
def profile_model() -> type[BaseModel]:
    """A profile file (``benchmarks/<name>.toml``, or any path)."""
    hints = typing.get_type_hints(RunConfig, include_extras=True)
    method_name = Literal[tuple(METHOD_PARAMS)]
    options = run_options_model()

    class Meta(BaseModel):
        model_config = STRICT
        name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)] | None = None
        description: str = ""
        seeds: Annotated[list[hints["seed"]], Field(min_length=1)] = [0]

        @field_validator("seeds")
        @classmethod
        def _unique(cls, v):
            if len(set(v)) != len(v):
                raise ValueError("seeds must not repeat")
            return v

    class _Setting(options):  # type: ignore[valid-type,misc]
        @field_validator("eps", mode="after", check_fields=False)
        @classmethod
        def _eps_text(cls, v):
            if isinstance(v, str):
                value = eps_value(v)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{v} = {value:g} is outside [0, 1] (pixels lie in [0, 1])")
            return v

        @field_validator("methods", check_fields=False)
        @classmethod
        def _unique(cls, v):
            if len(set(v)) != len(v):
                raise ValueError("methods must not repeat")
            return v

    setting = create_model(
        "setting", __base__=_Setting,
        dataset=(hints["dataset"], ...),
        eps=(Annotated[Union[hints["eps"], Annotated[str, Field(pattern=FRACTION)]],
                       Field(union_mode="left_to_right")], ...),
        methods=(Annotated[list[method_name], Field(min_length=1)], ...),
        methods_params=(methods_table_model(True) | None, None),
        # this setting's own certification values (e.g. budgets per dataset); [certify] gives the rest
        certify=(model_of(CertifySettings, "setting_certify", optional=True) | None, None),
    )

    teacher_options = model_of(RunConfig, "teacher_options", only=("train_eps_factor", "epochs", "init"),
                               optional=True, base=options.__base__)

    class Variant(BaseModel):
        model_config = STRICT
        name: Annotated[str, Field(min_length=1, max_length=64)]
        params: params_model(ADCERTParams) | None = None          # type: ignore[valid-type]
        teacher: teacher_options | None = None                         # type: ignore[valid-type]
        teacher_params: params_model(PGDParams) | None = None       # type: ignore[valid-type]

    class Ablations(BaseModel):
        model_config = STRICT
        base: params_model(ADCERTParams)                           # type: ignore[valid-type]
        variants: Annotated[list[Variant], Field(min_length=1)]
        seeds: Annotated[list[hints["seed"]], Field(min_length=1)] | None = None   # default: the profile's

    return create_model(
        "profile", __config__=STRICT,
        profile=(Meta, Meta()),
        defaults=(options | None, None),
        methods=(methods_table_model(True) | None, None),
        certify=(model_of(CertifySettings, "certify") | None, None),
        slurm=(model_of(SlurmSettings, "slurm") | None, None),
        ablations=(Ablations | None, None),
        settings=(Annotated[list[setting], Field(min_length=1)], ...),
    )


def json_schemas() -> dict[str, Any]:
    """The JSON schema of a profile and of a run config file (what ``check --schema`` prints)."""
    return {"profile": profile_model().model_json_schema(), "run_config": run_config_model().model_json_schema()}
