"""The parameters of each training method, as data: what a profile may set and what each value accepts.

A method's losses live in :mod:`harness.training.methods`, each a subclass of its parameter class
here, so the configuration (the plan, the schema, a run's id) knows every method's parameters and
defaults without importing the code that trains. The annotations (types, ranges, choices) are the
one statement of what a parameter accepts; :mod:`harness.config.schema` builds the validating models
from them, and ``__post_init__`` validates through those models, so a method built in code is held
to the same rules as one read from a file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from harness.config.constraints import AttackSteps, Fraction, NonNegative, Positive
from harness.config.schema import check_params


@dataclass
class MethodParams:
    """Base class: a method's name, what it needs, and its parameters as annotated dataclass fields."""

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False   # trained against a frozen PGD teacher of the same setting and seed
    uses_ibp_init: ClassVar[bool] = False   # starts from Shi et al.'s IBP initialisation unless a profile says not

    def __post_init__(self) -> None:
        check_params(type(self), {f.name: getattr(self, f.name) for f in fields(self)})


@dataclass
class StandardParams(MethodParams):
    name: ClassVar[str] = "standard"


@dataclass
class PGDParams(MethodParams):
    name: ClassVar[str] = "pgd"
    attack_steps: AttackSteps = 10
    attack_restarts: AttackSteps = 1
    attack_range: Positive = 1.0         # the attack's radius in units of the current eps
    attack_step_size: NonNegative = 0.0  # in units of eps; 0 = 2.5 / steps


@dataclass
class IBPParams(MethodParams):
    name: ClassVar[str] = "ibp"
    uses_ibp_init: ClassVar[bool] = True
    robust_weight: Fraction = 1.0        # w: (1 - w) clean CE + w IBP loss
    regulariser: NonNegative = 0.5       # lambda of Shi et al.'s warm-up regularisers (0: off)


@dataclass
class ExpressiveParams(MethodParams):
    """Shared fields of the expressive losses (MTL-IBP, CC-IBP, Exp-IBP) and AD-CERT."""

    uses_ibp_init: ClassVar[bool] = True
    alpha: Fraction = 0.5                # weight of the IBP term against the adversarial one
    attack_steps: AttackSteps = 1
    attack_restarts: AttackSteps = 1
    attack_range: Positive = 1.0         # beta: the attack's radius in units of the current eps
    attack_step_size: NonNegative = 0.0  # in units of eps; 0 = 2.5 / steps
    regulariser: NonNegative = 0.5


@dataclass
class MTLIBPParams(ExpressiveParams):
    name: ClassVar[str] = "mtl_ibp"


@dataclass
class CCIBPParams(ExpressiveParams):
    name: ClassVar[str] = "cc_ibp"


@dataclass
class ExpIBPParams(ExpressiveParams):
    name: ClassVar[str] = "exp_ibp"


@dataclass
class ADCERTParams(ExpressiveParams):
    name: ClassVar[str] = "ad_cert"
    needs_teacher: ClassVar[bool] = True
    robust_weight: Fraction = 1.0
    teacher_input: Literal["clean", "adv"] = "clean"
    attack_loss: Literal["ce", "kl"] = "ce"   # "kl": soft-label attack against the teacher (training only)
    variant: Literal["ad", "rslad", "natkl"] = "ad"
    init_from_teacher: bool = False


@dataclass
class CCDISTParams(ExpressiveParams):
    """CC-DIST (De Palma, arXiv 2602.02626) as the AD-CERT authors reimplemented it: alpha mixes the
    IBP box into the adversarial point, in margin space and in penultimate-feature space."""

    name: ClassVar[str] = "cc_dist"
    needs_teacher: ClassVar[bool] = True
    feature_weight: NonNegative = 5.0     # the feature term's weight is feature_weight / d (d: feature count)


@dataclass
class SABRParams(MethodParams):
    """SABR (Mueller et al., ICLR 2023): IBP over a small box around a PGD point of B(x, eps).

    Attack defaults: CTRAIN's SABR (8 steps of 0.5 eps, one restart); its step-size decay at steps 4
    and 7 is not implemented (the harness's PGD keeps a fixed step and each sample's best point).
    """

    name: ClassVar[str] = "sabr"
    uses_ibp_init: ClassVar[bool] = True    # CTBench's SABR scripts: --init fast --fast-reg 0.5
    box_ratio: Fraction = 0.4               # lambda: the propagated box's radius in units of the current eps
    robust_weight: Fraction = 1.0           # w: (1 - w) clean CE + w SABR loss (CTBench: 1)
    regulariser: NonNegative = 0.5          # Shi et al.'s warm-up regularisers, on the small box's bounds
    attack_steps: AttackSteps = 8
    attack_restarts: AttackSteps = 1
    attack_step_size: NonNegative = 0.5     # in units of eps; 0 = 2.5 / steps


@dataclass
class CROWNIBPParams(MethodParams):
    """CROWN-IBP (Zhang et al., ICLR 2020): the margin bound is beta * CROWN-IBP + (1 - beta) * IBP and
    the loss kappa * CE(f(x), y) + (1 - kappa) * robust CE of that bound, beta and kappa moving linearly
    from their start to their end values as eps grows to its final value (their code's
    ``factor = (eps_max - eps) / eps_max``). Defaults: the paper's and CTRAIN's (kappa 1 -> 0,
    beta 1 -> 0, Shi et al.'s initialisation and regulariser 0.5 as in CTRAIN's CROWN-IBP)."""

    name: ClassVar[str] = "crown_ibp"
    uses_ibp_init: ClassVar[bool] = True
    beta_start: Fraction = 1.0
    beta_end: Fraction = 0.0
    kappa_start: Fraction = 1.0
    kappa_end: Fraction = 0.0
    regulariser: NonNegative = 0.5


@dataclass
class PublishedParams(MethodParams):
    """Not a training method: the run loads a published checkpoint (RunConfig.checkpoint) instead."""
    name: ClassVar[str] = "published"


#: Every method's parameter class by name, in the order tables list the methods.
METHOD_PARAMS: dict[str, type[MethodParams]] = {
    c.name: c for c in (StandardParams, PGDParams, IBPParams, CROWNIBPParams, SABRParams, MTLIBPParams, CCIBPParams,
                        ExpIBPParams, ADCERTParams, CCDISTParams,
                        PublishedParams)}


def method_params(name: str) -> type[MethodParams]:
    """The parameter class of a method; an unknown name is a clear error."""
    if name not in METHOD_PARAMS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_PARAMS)}")
    return METHOD_PARAMS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """All parameters of a method with their default values (what a run config records)."""
    return {f.name: f.default for f in fields(method_params(name))}
