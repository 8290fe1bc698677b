"""Value constraints of configuration fields, as annotated types, and the error a bad value raises.

Dataclasses of the harness (:class:`harness.config.profile.RunConfig`, the methods' parameters, the
certification and SLURM settings) annotate their fields with these types, so each field states in
one place what it accepts; :mod:`harness.config.schema` builds the validating pydantic models from those
annotations. Every float is finite (no NaN, no infinity).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

#: A finite float.
Finite = Annotated[float, Field(allow_inf_nan=False)]
#: A finite float >= 0.
NonNegative = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
#: A finite float > 0.
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
#: A weight or fraction in [0, 1].
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
#: An l_inf radius in pixel space: every dataset's pixels lie in [0, 1], so a radius above 1 is
#: meaningless (the ball covers the whole domain) and almost certainly a unit mistake (e.g. 8 for 8/255).
PixelEps = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
#: A count that may be 0 (0 usually means "none" or "all", as the field's comment says).
Count = Annotated[int, Field(ge=0)]
#: A count of at least one.
AtLeastOne = Annotated[int, Field(ge=1)]
#: Attack steps and restarts.
AttackSteps = Annotated[int, Field(ge=1)]
#: A random seed.
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the file, the field and what is allowed."""
