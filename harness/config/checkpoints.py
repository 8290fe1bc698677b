"""Published checkpoints as data: what a profile setting certifies instead of a model it trains.

A published checkpoint is described by ``benchmarks/checkpoints/<name>.toml`` beside the file itself
(``<name>.pth``, shipped under the repository when small): its architecture and normalisation, how its
state_dict's keys map onto the harness's model, where it comes from (repository, commit, path, licence,
URL), its md5 and size, the numbers its authors published for it, and the verdicts published for single
test images. The description is validated by
the same strict schema machinery as profiles (:func:`load_checkpoint_spec`); a run config names it with
``checkpoint = "<name>"`` and ``method = "published"`` (see :class:`harness.config.settings.RunConfig`),
and :mod:`harness.training.published` turns it into a finished run folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from harness.config.constraints import AtLeastOne, ConfigError, Finite, Positive
from harness.config.schema import model_of, read_toml_or_json, validate

CHECKPOINTS = Path(__file__).resolve().parents[2] / "benchmarks" / "checkpoints"

#: A checkpoint's name: the stem of its description file (and of its weights file by default).
CheckpointName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
MD5 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]

__all__ = ["CHECKPOINTS", "CheckpointName", "PublishedCheckpoint", "PublishedNumber", "PublishedSample",
           "checkpoint_names", "load_checkpoint_spec"]


@dataclass(frozen=True)
class PublishedNumber:
    """A number the authors published for the checkpoint, with the tolerance it is reproduced to."""

    quantity: Annotated[str, Field(min_length=1)]   # e.g. "clean error", "lp-dual bound"
    value_pct: Finite                               # in percent of the test set
    tolerance_pct: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    measure: Annotated[str, Field(pattern=r"^(clean_error|pgd_error|lp_dual_error|exact_error)$")]
    source: str = ""
    lower_pct: Finite | None = None                 # a one-sided target range instead of value +- tolerance
    upper_pct: Finite | None = None


@dataclass(frozen=True)
class PublishedSample:
    """A verdict the authors (or a verifier's authors) published for one test image of the checkpoint."""

    index: Annotated[int, Field(ge=0)]              # 0-based test index
    verdict: Annotated[str, Field(pattern=r"^(robust|not robust|misclassified)$")]
    source: Annotated[str, Field(min_length=1)]
    note: str = ""                                  # e.g. the published minimal adversarial distance


@dataclass(frozen=True)
class PublishedCheckpoint:
    """One published model file and how the harness loads it (``benchmarks/checkpoints/<name>.toml``)."""

    dataset: str
    arch: str                                        # a name of harness.models.ARCHITECTURES
    md5: MD5
    size_bytes: AtLeastOne
    key_map: dict[str, str]                          # published layer prefix -> the harness model's
    url: str                                         # where it can be downloaded
    repository: str                                  # e.g. "locuslab/convex_adversarial"
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
    path: str                                        # its path in that repository
    licence: str
    width: AtLeastOne | None = None
    mean: tuple[Finite, ...] = (0.0,)                # the model's input normalisation (none: mean 0, std 1)
    std: tuple[Positive, ...] = (1.0,)
    file: str = ""                                   # the weights' file name beside the description ("": <name>.pth)
    description: str = ""
    published: tuple[PublishedNumber, ...] = field(default_factory=tuple)
    published_samples: tuple[PublishedSample, ...] = field(default_factory=tuple)
    name: str = ""                                   # set from the file name when loaded

    def weights_path(self) -> Path:
        return CHECKPOINTS / (self.file or f"{self.name}.pth")

    def identity(self) -> dict[str, Any]:
        """What determines the model: the bytes (md5) and how they are loaded (a run id hashes this)."""
        return {"name": self.name, "md5": self.md5, "arch": self.arch, "width": self.width,
                "key_map": dict(sorted(self.key_map.items())), "mean": list(self.mean), "std": list(self.std)}

    def digest(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@cache
def _spec_model() -> type[BaseModel]:
    number = model_of(PublishedNumber, "published_number")
    sample = model_of(PublishedSample, "published_sample")
    return model_of(PublishedCheckpoint, "checkpoint", exclude=("name", "published", "published_samples"),
                    extra_fields={"published": (list[number], Field(default_factory=list)),
                                  "published_samples": (list[sample], Field(default_factory=list))})


def checkpoint_names() -> list[str]:
    return sorted(p.stem for p in CHECKPOINTS.glob("*.toml"))


@cache
def load_checkpoint_spec(name: str) -> PublishedCheckpoint:
    """``benchmarks/checkpoints/<name>.toml``, validated (ConfigError naming the file and the field)."""
    path = CHECKPOINTS / f"{name}.toml"
    if not path.exists():
        raise ConfigError(f"checkpoint {name!r}: no {path.name} under {CHECKPOINTS}; known: "
                          f"{', '.join(checkpoint_names()) or 'none'}")
    model = _spec_model()
    data = validate(model, read_toml_or_json(path, "checkpoint description"), str(path)).model_dump()
    data["published"] = tuple(PublishedNumber(**p) for p in data["published"])
    data["published_samples"] = tuple(PublishedSample(**p) for p in data["published_samples"])
    for k in ("mean", "std"):
        data[k] = tuple(data[k])
    spec = PublishedCheckpoint(**data, name=name)
    if len(spec.mean) != len(spec.std):
        raise ConfigError(f"{path}: mean and std must have the same length (one value per channel)")
    return spec
