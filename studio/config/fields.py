"""The typed config's field machinery: every field carries its label, help text and where they apply its choices,
range, widget step and kind; `check_fields` validates a section from them. The UI builds its inputs from the same
metadata (`field_meta`), so the form, the CLI and the YAML never disagree."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import field, fields
from typing import Any


def setting(default: Any, label: str, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its label, help text, and where they apply its choices, range (minimum,
    maximum), widget step, widget ("slider") and a hint added to its error message: the one place each is
    written. The UI builds its inputs from these, and `check_fields` validates every section from them."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"label": label, "help": help, **kw})
    return field(default=default, metadata={"label": label, "help": help, **kw})


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_fields(obj: Any) -> None:
    """Type, choices and range of every documented field, from its metadata; whole floats become ints
    (a UI number box hands over 8.0). Raises ValueError with a sentence naming the field."""
    for f in fields(obj):
        meta = f.metadata
        if "label" not in meta or f.type not in TYPES:
            continue
        v, label = getattr(obj, f.name), meta["label"]
        hint = f"; {meta['hint']}" if meta.get("hint") else ""
        kind = TYPES[f.type]
        if kind is int:
            if is_num(v) and math.isfinite(v) and float(v).is_integer():
                v = int(v)
            require(is_int(v), f"{label} must be a whole number (got {v!r}){hint}.")
        elif kind is float:
            require(is_num(v) and math.isfinite(v), f"{label} must be a number (got {v!r}){hint}.")
            v = float(v)
        elif kind is bool:
            require(isinstance(v, bool), f"{label} must be true or false (got {v!r}).")
        elif kind is str:
            require(isinstance(v, str), f"{label} must be text (got {v!r}).")
        setattr(obj, f.name, v)
        choices = meta.get("choices")
        if choices is not None and kind is not list:
            require(v in choices, f"{label} '{v}' is not known: use one of {', '.join(choices)}.")
        elif choices is not None:
            bad = [x for x in v if x not in choices] if isinstance(v, list) else [v]
            require(not bad, f"{label}: {', '.join(map(repr, bad))} not known: use {', '.join(choices)}.")
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if lo is not None:
            what = "a whole number from" if kind is int else "between"
            require(lo <= v <= hi, f"{label} must be {what} {lo:g} {'to' if kind is int else 'and'} {hi:g} "
                                   f"(got {v!r}){hint}.")


TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list}


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
