"""The validation machinery: strict pydantic models generated from the harness's typed dataclasses.

What a field accepts is stated once, in the annotation of the dataclass that holds it
(:class:`harness.config.settings.RunConfig`, :class:`harness.config.settings.CertifySettings`,
:class:`harness.config.settings.SlurmSettings`, each method's parameters in :mod:`harness.config.methods`);
this module turns those annotations into strict pydantic v2 models (no bool for an int, no float for an
int, no string for a number, unknown keys refused). The two file formats are assembled beside the
dataclasses they describe (:mod:`harness.config.settings`, :mod:`harness.config.profile`);
``python -m harness check --schema`` prints their JSON schemas.

Every validation error becomes one line naming the file, the field path (``settings[1].methods_params.
ad_cert.alpha``), the value and what is allowed, with the nearest known key suggested for a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import typing
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, create_model

from harness.config.constraints import ConfigError

STRICT = ConfigDict(strict=True, extra="forbid")

# Tags of the scalar-or-list union of swept parameters; they never appear in error paths.
_ONE, _SWEEP = "<one>", "<sweep>"


# ---- models generated from dataclasses ------------------------------------------------------------

def _schema_type(hint: Any) -> Any:
    """The pydantic type for a dataclass annotation: tuples of configuration data arrive as TOML lists."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return list[_schema_type(args[0])]
    if origin is Annotated:
        base, *meta = typing.get_args(hint)
        return Annotated[(_schema_type(base), *meta)]
    return hint


def sweepable(hint: Any) -> Any:
    """``T`` or a non-empty list of ``T`` (a sweep over the values), errors reported for the form given."""
    return Annotated[
        Union[Annotated[hint, Tag(_ONE)], Annotated[list[hint], Field(min_length=1), Tag(_SWEEP)]],
        Discriminator(lambda v: _SWEEP if isinstance(v, list) else _ONE),
    ]


def model_of(cls: type, name: str, *, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
             optional: bool = False, sweep: bool = False, base: type[BaseModel] | None = None,
             extra_fields: dict[str, Any] | None = None) -> type[BaseModel]:
    """A strict pydantic model with the fields of dataclass ``cls`` (types and defaults from it).

    ``optional``: every field may be left out (default None: "not set here"); ``sweep``: every field
    also accepts a non-empty list of values.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    spec: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or (only is not None and f.name not in only):
            continue
        t = _schema_type(hints[f.name])
        if sweep:
            t = sweepable(t)
        if optional:
            spec[f.name] = (t | None, None)
        elif isinstance(f.default, tuple):  # a tuple field is a list in the file format
            spec[f.name] = (t, Field(default_factory=lambda d=f.default: list(d)))
        elif f.default is not dataclasses.MISSING:
            spec[f.name] = (t, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            spec[f.name] = (t, Field(default_factory=f.default_factory))
        else:
            spec[f.name] = (t, ...)
    spec.update(extra_fields or {})
    if base is not None:
        return create_model(name, __base__=base, **spec)
    return create_model(name, __config__=STRICT, **spec)


@cache
def params_model(cls: type, sweep: bool = False) -> type[BaseModel]:
    """The parameters of dataclass ``cls`` (e.g. a method's), all optional: its defaults fill the rest.

    ``sweep``: every field also accepts a non-empty list of values (one run per value).
    """
    name = getattr(cls, "name", "") or cls.__name__
    return model_of(cls, f"{name}_params{'_sweep' if sweep else ''}", optional=True, sweep=sweep)


def check_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """Validate parameters of dataclass ``cls`` (strict); returns those given, typed. Raises ValueError."""
    model = params_model(cls)
    try:
        out = model.model_validate(params)
    except ValidationError as e:
        raise ValueError(f"{getattr(cls, 'name', '') or cls.__name__}: {format_error(e, model)}") from None
    return out.model_dump(exclude_unset=True)


FRACTION = r"^\s*\d+(\.\d*)?\s*/\s*\d*[1-9]\d*(\.\d*)?\s*$"


def eps_value(v: float | str) -> float:
    """A profile eps as a number: 0.3 stays 0.3, the text "8/255" becomes 8 / 255."""
    if isinstance(v, str):
        num, den = v.split("/")
        return float(num) / float(den)
    return float(v)


def validate(model: type[BaseModel], data: Any, source: str, at: tuple = ()) -> BaseModel:
    """``model.model_validate(data)``, or a ConfigError of one line naming ``source``.

    ``at``: where ``data`` sits in the file (a path prefix for the message, e.g. ``("params",)``).
    """
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_error(e, model, at)}") from None


# ---- error messages ---------------------------------------------------------------------------------

def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if part in (_ONE, _SWEEP):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "list[", "constrained-")) or part in ("float", "int", "str", "bool"):
            continue  # pydantic's names of union members, not keys of the file
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _unwrap(t: Any) -> list[Any]:
    """The model classes a field's annotation may hold (through Optional, Annotated, list, unions)."""
    origin = typing.get_origin(t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return [t]
    out = []
    for a in typing.get_args(t) if origin is not None else ():
        out += _unwrap(a)
    return out


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the model allows at ``loc`` (the location of an unknown key's parent)."""
    current = [model]
    for part in loc:
        if isinstance(part, int) or part in (_ONE, _SWEEP):
            continue
        nxt = []
        for m in current:
            f = m.model_fields.get(part)
            if f is not None:
                nxt += _unwrap(f.annotation)
        current = nxt or current
    keys: list[str] = []
    for m in current:
        keys += list(m.model_fields)
    return keys


def _value(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def format_error(e: ValidationError, model: type[BaseModel], at: tuple = ()) -> str:
    """One line: the first error's field path, value and what is allowed (+ how many more)."""
    errors = e.errors(include_url=False)
    err = errors[0]
    path = _path(tuple(at) + tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        known = _known_keys(model, err["loc"][:-1])
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        msg = f"{path}: unknown key; {hint}known: {', '.join(known)}"
    elif err["type"] == "missing":
        msg = f"{path}: required, missing"
    else:
        allowed = err["msg"][0].lower() + err["msg"][1:]
        allowed = allowed.removeprefix("value error, ")
        msg = f"{path} = {_value(err.get('input'))}: {allowed}"
    more = len(errors) - 1
    return msg + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def read_toml_or_json(path: Path, what: str) -> dict[str, Any]:
    """The table a config file holds, or a one-line ConfigError (missing, a folder, not text, bad syntax)."""
    if not path.exists():
        raise ConfigError(f"{path}: {what} file does not exist")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a {what} file (.toml or .json)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); expected a {what} file in TOML or JSON") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if not text.strip():
        raise ConfigError(f"{path}: empty file; expected a {what} in TOML or JSON")
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of keys at the top level, got {type(data).__name__}")
    return data


__all__ = ["ConfigError", "FRACTION", "STRICT", "check_params", "eps_value", "format_error", "model_of", "params_model",
           "read_toml_or_json", "sweepable", "validate"]
