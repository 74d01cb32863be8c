"""The `checks:` list of a run config -> validated `Check`s, and back to YAML. Every fault is refused here, before
any answer is scored, with a ValueError of one sentence that names the check (its position and name) and says what
to write instead; `check_columns` refuses a compare_to column the data does not have.
"""
from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping

import yaml

from .extract import compiled
from ..env.safeyaml import load_yaml, short
from .spec import COMMON, EXTRACT_FORMS, FIELDS, NORMALIZERS, TYPES, Check

_NAME = re.compile(r"[A-Za-z0-9_.-]+")

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _regex_ok(where: str, what: str, pattern, flags: int = 0) -> None:
    if not isinstance(pattern, str):
        raise ValueError(f"{where}: {what} must be text (a regular expression), not {short(pattern)}.")
    try:
        compiled(pattern, flags)
    except re.error as e:
        at = f" at position {e.pos}" if e.pos is not None else ""
        raise ValueError(f"{where}: the {what} {short(pattern)} is not a valid regular expression: "
                         f"{e.msg}{at}.") from None


def _extract_ok(where: str, ext) -> None:
    if ext is None or ext in ("whole", "last_number"):
        return
    bad = f"{where}: extract {short(ext)} is not one of {EXTRACT_FORMS}."
    if not isinstance(ext, Mapping) or len(ext) != 1:
        raise ValueError(bad)
    (kind, arg), = ext.items()
    if kind == "between":
        if not (isinstance(arg, (list, tuple)) and len(arg) == 2 and all(isinstance(a, str) for a in arg)):
            raise ValueError(f"{where}: extract between needs two texts, [START, END] (END may be \"\").")
    elif kind == "regex":
        _regex_ok(where, "extract pattern", arg)
    elif kind == "json":
        if not isinstance(arg, (str, int)) or isinstance(arg, bool):
            raise ValueError(f"{where}: extract json needs a dotted path such as answer or items.0.name.")
    else:
        raise ValueError(bad)


def _bools(where: str, f: dict, *keys: str) -> None:
    for k in keys:
        if k in f and not isinstance(f[k], bool):
            raise ValueError(f"{where}: {k} must be true or false, not {short(f[k])}.")


def _strings(where: str, f: dict, key: str) -> None:
    v = f[key]
    if not (isinstance(v, list) and v and all(isinstance(s, str) and s for s in v)):
        raise ValueError(f"{where}: {key} must be a list of one or more non-empty texts, such as [yes, true].")


def _column_ok(where: str, f: dict) -> None:
    if "compare_to" in f and not (isinstance(f["compare_to"], str) and f["compare_to"]):
        raise ValueError(f"{where}: compare_to must be the name of a column of your data.")


def _exact(where: str, f: dict) -> None:
    steps = f.get("normalize", [])
    for step in [steps] if isinstance(steps, str) else steps if isinstance(steps, list) else [steps]:
        if step not in NORMALIZERS:
            raise ValueError(f"{where}: unknown normalize step {short(step)}; the known ones are "
                             f"{', '.join(NORMALIZERS)}.")
    _column_ok(where, f)


def _numeric(where: str, f: dict) -> None:
    for k in ("tolerance", "relative"):
        if k in f and not (_is_number(f[k]) and f[k] >= 0):
            raise ValueError(f"{where}: {k} must be a number of 0 or more, not {short(f[k])}.")
    _column_ok(where, f)


def _regex(where: str, f: dict) -> None:
    if "pattern" not in f:
        raise ValueError(f"{where}: a regex check needs a pattern, the regular expression the answer must match.")
    if f.get("mode", "search") not in ("search", "fullmatch"):
        raise ValueError(f"{where}: mode must be search (anywhere in the answer) or fullmatch (the whole answer).")
    _bools(where, f, "ignore_case", "dotall", "expect")
    flags = (re.IGNORECASE if f.get("ignore_case") else 0) | (re.DOTALL if f.get("dotall", True) else 0)
    _regex_ok(where, "pattern", f["pattern"], flags)


def _schema_ok(where: str, schema) -> None:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, Mapping):
        raise ValueError(f"{where}: schema must be a JSON Schema mapping, such as {{type: object}}.")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        path = getattr(e, "json_path", None) or "$" + "".join(f".{p}" for p in e.path)
        raise ValueError(f"{where}: the schema is not a valid JSON Schema at {path[:80]}: {e.message[:200]}.") from None


def _json(where: str, f: dict) -> None:
    if "required" in f:
        _strings(where, f, "required")
    if "schema" in f:
        _schema_ok(where, f["schema"])
    _bools(where, f, "same_as_reference")
    _column_ok(where, f)
    if "compare_to" in f and not f.get("same_as_reference"):
        raise ValueError(f"{where}: compare_to is only used with same_as_reference: true; add it or remove compare_to.")


def _contains(where: str, f: dict) -> None:
    if "all" not in f and "any" not in f:
        raise ValueError(f"{where}: give the texts to look for as all: [...] (every one) and/or any: [...] (one).")
    for k in ("all", "any"):
        if k in f:
            _strings(where, f, k)
    _bools(where, f, "ignore_case")


def _length(where: str, f: dict) -> None:
    if not f:
        raise ValueError(f"{where}: give at least one of {', '.join(FIELDS['length'])}.")
    for k, v in f.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ValueError(f"{where}: {k} must be a whole number of 1 or more, not {short(v)}.")
    for unit in ("words", "chars"):
        lo, hi = f.get(f"min_{unit}"), f.get(f"max_{unit}")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"{where}: min_{unit} ({lo}) is more than max_{unit} ({hi}).")


_VALIDATE = {"exact": _exact, "numeric": _numeric, "regex": _regex, "json": _json, "contains": _contains,
             "not_contains": _contains, "length": _length}


def _name(i: int, item: Mapping) -> str:
    name = item.get("name")
    if name is None or name == "":
        raise ValueError(f"check {i} has no name: add name: with letters, digits, _ . or - (it becomes a metric).")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"check {i} has the name {short(name)}, which may only use letters, digits, _ . and -: "
                         "rename it.")
    return name


def _parse_one(i: int, item) -> Check:
    if not isinstance(item, Mapping):
        raise ValueError(f"check {i} is {short(item)}, not a mapping of fields such as {{name: short, type: length}}.")
    name = _name(i, item)
    where = f"check {i} '{name}'"
    typ = item.get("type")
    if typ is None:
        raise ValueError(f"{where} has no type: add type: with one of {', '.join(TYPES)}.")
    if not isinstance(typ, str) or typ not in TYPES:  # a list here is unhashable: no dict lookup
        raise ValueError(f"{where}: unknown type {short(typ)}; the known types are {', '.join(TYPES)}.")
    for k in item:
        if k not in COMMON and k not in FIELDS[typ]:
            raise ValueError(f"{where}: unknown field {short(k)} for a {typ} check; its fields are "
                             f"{', '.join(FIELDS[typ])}, besides {', '.join(COMMON)}.")
    weight = item.get("weight", 1)
    if not (_is_number(weight) and weight >= 0):
        raise ValueError(f"{where}: weight must be a number of 0 or more, not {short(weight)}.")
    _extract_ok(where, item.get("extract"))
    fields = {k: copy.deepcopy(v) for k, v in item.items() if k not in COMMON}
    _VALIDATE[typ](where, fields)
    return Check(name, typ, float(weight), copy.deepcopy(item.get("extract")), fields)


def parse_checks(raw) -> list[Check]:
    """None -> []; a list of mappings (or Check objects, passed through) -> Checks, or ValueError naming the check."""
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raise ValueError("checks must be a list, one entry per check (in YAML each starting with '- ').")
    out: list[Check] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw, 1):
        check = item if isinstance(item, Check) else _parse_one(i, item)
        if check.name in seen:
            raise ValueError(f"check {i} '{check.name}' has the same name as check {seen[check.name]}: "
                             "give each check its own name.")
        seen[check.name] = i
        out.append(check)
    return out


def check_columns(checks, columns) -> None:
    """ValueError when a check's compare_to names a column the data does not have."""
    have = [str(c) for c in columns]
    for check in parse_checks(checks):
        col = check.column
        if col is not None and col not in have:
            raise ValueError(f"check '{check.name}' compares to column '{col}' which the data does not have: "
                             f"its columns are {', '.join(have) or '(none)'}.")


def from_yaml(text: str) -> list[Check]:
    """Checks from YAML: a list of checks, or a mapping with a `checks:` key (other keys are ignored)."""
    doc = load_yaml(text, "The checks")
    if isinstance(doc, Mapping) and "checks" in doc:
        doc = doc["checks"]
    elif doc is not None and not isinstance(doc, list):
        raise ValueError("Write the checks as a YAML list (each starting with '- ') or under a checks: key.")
    return parse_checks(doc)


def to_yaml(checks) -> str:
    """The `checks:` mapping form, in the order given."""
    return yaml.safe_dump({"checks": [c.to_dict() for c in parse_checks(checks)]}, sort_keys=False,
                          allow_unicode=True)
