"""Scoring one model answer with a check: the extracted answer (and reference, for exact, numeric and json
same_as_reference) handed to the type's scorer, which returns a score in [0, 1] and, below 1, a short reason.
`detail` gives the score with what was compared and why; `score` and `score_all` only the numbers.
"""
from __future__ import annotations

import functools
import json
import math
import re
import string
import unicodedata

from .extract import compiled, describe, extract, find_json, parse_number
from .spec import Check

_ASCII_PUNCT = set(string.punctuation)
_SPACES = re.compile(r"\s+")
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _quoted(items) -> str:
    return ", ".join(repr(s) for s in items)


def _fmt(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 1e16 else repr(x)


def normalize(text: str, steps) -> str:
    """The exact check's normalize steps, in the order given."""
    for step in [steps] if isinstance(steps, str) else steps:
        if step == "strip":
            text = text.strip()
        elif step == "lower":
            text = text.lower()
        elif step == "collapse_spaces":
            text = _SPACES.sub(" ", text)
        elif step == "remove_commas":
            text = text.replace(",", "")
        elif step == "remove_punctuation":
            text = "".join(ch for ch in text if ch not in _ASCII_PUNCT and not unicodedata.category(ch).startswith("P"))
    return text


def _exact(f: dict, got: str, ref: str) -> tuple[float, str]:
    steps = f.get("normalize", ["strip"])
    a, b = normalize(got, steps), normalize(ref, steps)
    return (1.0, "") if a == b else (0.0, f"{_short(a)!r} != {_short(b)!r}")


def _numeric(f: dict, got: str, ref: str) -> tuple[float, str]:
    a, b = parse_number(got), parse_number(ref)
    if a is None:
        return 0.0, f"no number in {_short(got)!r}"
    if b is None:
        return 0.0, f"no number in the reference {_short(ref)!r}"
    tol, rel = f.get("tolerance", 0), f.get("relative", 0)
    diff, slop = abs(a - b), 1e-9 * max(abs(a), abs(b))  # slop: 1.1 vs 1.0 within tolerance 0.1 despite float error
    if diff <= tol + slop or diff <= rel * abs(b) + slop:
        return 1.0, ""
    within = [f"tolerance {tol}"] * bool(tol) + [f"relative {rel}"] * bool(rel)
    return 0.0, f"{_fmt(a)} != {_fmt(b)}" + (f" ({', '.join(within)})" if within else "")


def _regex(f: dict, got: str, ref) -> tuple[float, str]:
    flags = (re.IGNORECASE if f.get("ignore_case") else 0) | (re.DOTALL if f.get("dotall", True) else 0)
    rx = compiled(f["pattern"], flags)
    hit = (rx.fullmatch if f.get("mode") == "fullmatch" else rx.search)(got) is not None
    if hit == f.get("expect", True):
        return 1.0, ""
    return 0.0, f"matches {f['pattern']!r} (expect: false)" if hit else f"does not match {f['pattern']!r}"


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str):
    from jsonschema.validators import validator_for

    schema = json.loads(schema_json)
    cls = validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_error(schema: dict, value) -> str:
    """'' when value is valid under schema, else its most relevant fault: "'x' is a required property at $"."""
    from jsonschema.exceptions import best_match

    err = best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    return "" if err is None else f"{_short(err.message, 160)} at {err.json_path}"


def _json(f: dict, got: str, ref) -> tuple[float, str]:
    found, value = find_json(got)
    if not found:
        return 0.0, "no JSON object in the answer"
    required = f.get("required") or []
    if required and not isinstance(value, dict):
        return 0.0, f"the JSON is {_JSON_KINDS.get(type(value), 'not an object')}, not an object with keys"
    missing = [k for k in required if k not in value]
    if missing:
        return 0.0, f"missing key{'s' * (len(missing) > 1)} {_quoted(missing)}"
    if "schema" in f:
        err = schema_error(f["schema"], value)
        if err:
            return 0.0, f"schema: {err}"
    if f.get("same_as_reference"):
        ref_found, ref_value = find_json(ref)
        if not ref_found:
            return 0.0, "no JSON object in the reference"
        if value != ref_value:
            return 0.0, "the JSON differs from the reference's"
    return 1.0, ""


def _texts(f: dict, got: str):
    fold = str.lower if f.get("ignore_case") else str
    return fold, fold(got)


def _contains(f: dict, got: str, ref) -> tuple[float, str]:
    fold, hay = _texts(f, got)
    missing = [s for s in f.get("all", []) if fold(s) not in hay]
    if missing:
        return 0.0, f"missing {_quoted(missing)}"
    if f.get("any") and not any(fold(s) in hay for s in f["any"]):
        return 0.0, f"none of {_quoted(f['any'])}"
    return 1.0, ""


def _not_contains(f: dict, got: str, ref) -> tuple[float, str]:
    fold, hay = _texts(f, got)
    present = [s for s in f.get("all", []) + f.get("any", []) if fold(s) in hay]
    return (0.0, f"contains {_quoted(present)}") if present else (1.0, "")


def _length(f: dict, got: str, ref) -> tuple[float, str]:
    counts = {"words": len(got.split()), "chars": len(got)}
    best, why = 1.0, ""
    for unit, n in counts.items():
        hi, lo = f.get(f"max_{unit}"), f.get(f"min_{unit}")
        if hi is not None and n > hi and max(0.0, 2 - n / hi) < best:
            best, why = max(0.0, 2 - n / hi), f"{n} {unit}, limit {hi}"
        if lo is not None and n < lo and n / lo < best:
            best, why = n / lo, f"{n} {unit}, at least {lo} wanted"
    return best, why


_SCORERS = {"exact": _exact, "numeric": _numeric, "regex": _regex, "json": _json, "contains": _contains,
            "not_contains": _not_contains, "length": _length}


def _uses_reference(check: Check) -> bool:
    return check.type in ("exact", "numeric") or (check.type == "json" and bool(check.fields.get("same_as_reference")))


def _reference(check: Check, row: dict) -> tuple[str | None, str]:
    """The reference text for this check (the row's own, or its compare_to column), or None and the reason."""
    col = check.column
    if col is None:
        ref = row.get("reference")
        return (None, "no reference") if ref is None else (str(ref), "")
    value = (row.get("columns") or {}).get(col)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, f"no reference: column '{col}' is empty"
    return str(value), ""


def _result(s: float, got, ref, why: str) -> dict:
    s = min(1.0, max(0.0, float(s)))
    return {"score": s, "extracted": got, "reference": ref, "why": why if s < 1 else ""}


def detail(check: Check, answer: str, row: dict | None) -> dict:
    """{"score", "extracted" (the answer's part checked), "reference" (the extracted reference, or None),
    "why" (a short reason when the score is below 1, else "")}. `extract` applies to the reference as to the answer;
    a compare_to column where it finds nothing is taken whole (it usually holds the bare value)."""
    row = row or {}
    got = extract(check.extract, "" if answer is None else str(answer))
    if got is None:
        return _result(0.0, None, None, f"extract {describe(check.extract)} found nothing")
    ref = None
    if _uses_reference(check):
        ref_text, why = _reference(check, row)
        if ref_text is None:
            return _result(0.0, got, None, why)
        ref = extract(check.extract, ref_text)
        if ref is None and check.column is not None:
            ref = ref_text.strip()  # a column of its own usually holds the bare value (a number, a label)
        if ref is None:
            return _result(0.0, got, None, f"extract {describe(check.extract)} found nothing in the reference")
    s, why = _SCORERS[check.type](check.fields, got, ref)
    return _result(s, got, ref, why)


def score(check: Check, answer: str, row: dict | None) -> float:
    """The check's score of one answer, in [0, 1]."""
    return detail(check, answer, row)["score"]


def score_all(checks, answer: str, row: dict | None) -> dict[str, float]:
    """name -> score, for every check."""
    return {c.name: score(c, answer, row) for c in checks}
