"""Training methods: each is a loss over one batch given the model, an optional teacher and the eps.

The shared training loop (``harness.training.loop``) knows no method by name: it builds one from
:data:`METHODS` with the run's parameters and calls it inside ``frozen_batch_stats`` so that
BatchNorm statistics come from the clean pass (which every method computes first). Each method is a
subclass of its parameter class in :mod:`harness.config.methods` (fields, defaults, validation) that
adds the loss; the losses live by family: :mod:`.standard` (standard, PGD), :mod:`.certified` (IBP,
SABR, CROWN-IBP), :mod:`.expressive` (MTL-IBP, CC-IBP, Exp-IBP), :mod:`.distillation` (AD-CERT,
CC-DIST), on the building blocks of :mod:`.base`. Formulas: docs/methods.md.
"""

from __future__ import annotations

from typing import Any

from harness.config.methods import method_params
from harness.config.schema import check_params
from harness.training.methods.base import TERMS, Batch, LossOut, Method, robust_ce_from_margins, shi_regularisers
from harness.training.methods.certified import CROWNIBP, IBP, SABR, small_box
from harness.training.methods.distillation import ADCERT, CCDIST, worst_case_feature_distance
from harness.training.methods.expressive import CCIBP, MTLIBP, ExpIBP
from harness.training.methods.standard import PGDAT, Standard

__all__ = ["ADCERT", "CCDIST", "CCIBP", "CROWNIBP", "IBP", "METHODS", "MTLIBP", "PGDAT", "SABR", "TERMS", "Batch",
           "ExpIBP", "LossOut", "Method", "Standard", "make_method", "robust_ce_from_margins", "shi_regularisers",
           "small_box", "worst_case_feature_distance"]

#: Every method's loss by name (one per parameter class of :data:`harness.config.methods.METHOD_PARAMS`).
METHODS: dict[str, type[Method]] = {m.name: m for m in (Standard, PGDAT, IBP, CROWNIBP, SABR, MTLIBP, CCIBP, ExpIBP,
                                                         ADCERT, CCDIST)}


def make_method(name: str, params: dict[str, Any] | None = None) -> Method:
    """Build a method by name from its parameters; unknown names or parameters are clear errors."""
    method_params(name)  # an unknown name: the configuration's error
    cls = METHODS[name]
    return cls(**check_params(cls, dict(params or {})))
