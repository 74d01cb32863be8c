"""The typed config's field machinery: every field carries its label, help text and where they apply its choices,
range, widget step and kind; `check_fields` validates a section from them. The UI builds its inputs from the same
metadata (`field_meta`), so the form, the CLI and the YAML never disagree."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import field, fields
from typing import Any

from ..env.safeyaml import short


def setting(default: Any, label: str, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its label, help text, and where they apply its choices, range (minimum,
    maximum), widget step, widget ("slider"), a hint added to its error message and `more`: the one place each is
    written. `help` is one plain sentence (the form shows it under the field); `more`, when the field needs it, is
    the longer explanation the form keeps behind "More about these settings". The UI builds its inputs from these,
    and `check_fields` validates every section from them."""
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
        v = _typed(getattr(obj, f.name), TYPES[f.type], meta)
        setattr(obj, f.name, v)
        _in_range(v, TYPES[f.type], meta)


def _typed(v: Any, kind: type, meta: dict) -> Any:
    """v as a value of `kind`, or ValueError. A list or mapping where one value belongs is refused by its shape,
    before anything formats it (a YAML alias tree behind one field can hold 10^9 values)."""
    label, hint = meta["label"], f"; {meta['hint']}" if meta.get("hint") else ""
    if kind is list:
        require(isinstance(v, list), f"{label} must be a list of names, not {shape(v)}.")
        for i, x in enumerate(v, 1):
            require(isinstance(x, str), f"{label}: item {i} is {shape(x)}, not a name.")
        return v
    require(isinstance(v, SCALARS), f"{label} must be {WORDS[kind]}, not {shape(v)}{hint}.")
    if kind is int:
        if is_num(v) and math.isfinite(v) and float(v).is_integer():
            v = int(v)
        require(is_int(v), f"{label} must be a whole number (got {short(v)}){hint}.")
    elif kind is float:
        require(is_num(v) and math.isfinite(v), f"{label} must be a number (got {short(v)}){hint}.")
        v = float(v)
    elif kind is bool:
        require(isinstance(v, bool), f"{label} must be true or false (got {short(v)}).")
    elif kind is str:
        require(isinstance(v, str), f"{label} must be text (got {short(v)}).")
    return v


def _in_range(v: Any, kind: type, meta: dict) -> None:
    label, hint = meta["label"], f"; {meta['hint']}" if meta.get("hint") else ""
    choices = meta.get("choices")
    if choices is not None and kind is not list:
        require(v in choices, f"{label} {short(v)} is not known: use one of {', '.join(choices)}.")
    elif choices is not None:
        bad = [x for x in v if x not in choices]
        require(not bad, f"{label}: {', '.join(map(short, bad[:5]))}{' ...' if len(bad) > 5 else ''} not known: "
                         f"use {', '.join(choices)}.")
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None:
        what = "a whole number from" if kind is int else "between"
        require(lo <= v <= hi, f"{label} must be {what} {lo:g} {'to' if kind is int else 'and'} {hi:g} "
                               f"(got {short(v)}){hint}.")


SCALARS = (str, int, float, bool, type(None))  # what YAML writes without brackets (dates and binary aside)
WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def shape(v: Any) -> str:
    """What a value is, in words, without formatting it: 'a list', 'a mapping', or short(v) for one value."""
    if isinstance(v, dict):
        return "a mapping (key: value lines)"
    if isinstance(v, (list, tuple, set)):
        return "a list"
    return short(v) if isinstance(v, SCALARS) else f"a {type(v).__name__}"


def sci(v: float, digits: int = 4) -> str:
    """A number as papers write a learning rate: 2e-4, 1.5e-3 (0.0002 hides its size in zeros), to `digits`
    significant digits with trailing zeros dropped."""
    if v == 0:
        return "0"
    mantissa, exp = f"{v:.{digits - 1}e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def names(keys) -> str:
    """Unknown keys for a message: plain names as they are, anything else quoted short, at most 5 of them (a
    1 MB file can hold 100,000 keys; YAML keys may be numbers, which do not sort with texts)."""
    shown = sorted(k if isinstance(k, str) and k.isidentifier() else short(k, 40) for k in keys)
    return ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")


def check_text(key: str, label: str, v: Any, where: str = "", depth: int = 0) -> None:
    """ValueError naming the field (`label`, dotted `key`) when a text in v, at any depth, cannot be written as
    UTF-8: a lone surrogate from a YAML \\uDC80 escape or a file name decoded with surrogateescape, which would
    otherwise fail later as a codec error that names no field."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{label} ({key}{where}) holds a lone UTF-16 surrogate ({short(v[e.start])}) at "
                             f"character {e.start + 1}, which cannot be written as UTF-8: retype that text (a "
                             f"\\uD800-\\uDFFF escape in YAML or a file name in another encoding makes one).") from None
    elif depth > 64:  # the YAML loader nests no deeper; a Python value may loop back on itself
        return
    elif isinstance(v, dict):
        for k, x in v.items():
            check_text(key, label, k, where, depth + 1)
            check_text(key, label, x, f"{where}.{k[:40] if isinstance(k, str) else short(k, 40)}", depth + 1)
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v, 1):
            check_text(key, label, x, f"{where}[{i}]", depth + 1)


TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list}


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
