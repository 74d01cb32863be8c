"""Which part of an answer a check looks at: the whole text, the text between two markers, a regex group, the last
number, or a value inside the answer's JSON. The same extraction is applied to the reference. Also the number and
JSON readers the scorers share, and the cache of compiled regular expressions (scoring runs thousands of times).
"""
from __future__ import annotations

import functools
import json
import math
import re
from typing import Any

# -3, +2, 1,234.5 (commas as thousands separators), .5, 2e-4; a sign counts only when no word or number is before it
_NUMBER = re.compile(r"(?:(?<![\w.])[-+])?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])\.\d+)(?:[eE][-+]?\d+)?")
_JSON_START = re.compile(r"[\[{]")
_DECODER = json.JSONDecoder()
_MISSING = object()


@functools.lru_cache(maxsize=512)
def compiled(pattern: str, flags: int = 0) -> re.Pattern:
    """re.compile, cached (raises re.error for a bad pattern; errors are not cached)."""
    return re.compile(pattern, flags)


def last_number(text: str) -> str | None:
    """The last number in the text, commas and a leading + removed ("1,234.5" -> "1234.5"), or None."""
    found = _NUMBER.findall(text or "")
    return found[-1].replace(",", "").lstrip("+") if found else None


def parse_number(text: str | None) -> float | None:
    """The text as a number: the whole text once commas, spaces, a leading $ and a trailing % are removed,
    else its last number; None when there is none (or it is not finite)."""
    if text is None:
        return None
    s = re.sub(r"[\s,]", "", text)
    if s.startswith(("-$", "+$")):
        s = s[0] + s[2:]
    s = s.removeprefix("$").removesuffix("%")
    for candidate in (s, last_number(text)):
        try:
            x = float(candidate)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            return x
    return None


def find_json(text: str | None) -> tuple[bool, Any]:
    """(True, value) for the text parsed as JSON, or else the first JSON object or array inside it (in a ```json
    fence, after prose); (False, None) when there is none."""
    if text is None:
        return False, None
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        pass
    for m in _JSON_START.finditer(text):
        try:
            return True, _DECODER.raw_decode(text, m.start())[0]
        except (ValueError, RecursionError):
            continue
    return False, None


def _at_path(value: Any, path: str) -> Any:
    """The value at a dotted path ("a.b.0.c": integer parts index lists), or _MISSING."""
    for part in path.split(".") if path else ():
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
            if value is _MISSING:
                return _MISSING
        elif isinstance(value, list):
            try:
                value = value[int(part)]
            except (ValueError, IndexError):
                return _MISSING
        else:
            return _MISSING
    return value


def _json_at(text: str, path: Any) -> str | None:
    found, value = find_json(text)
    if not found:
        return None
    value = _at_path(value, str(path))
    if value is _MISSING:
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    i += len(start)
    if end == "":
        return text[i:].strip()
    j = text.find(end, i)
    return None if j < 0 else text[i:j].strip()


def _regex(text: str, pattern: str) -> str | None:
    rx = compiled(pattern, re.DOTALL)
    m = rx.search(text)
    if m is None:
        return None
    return m.group(1) if rx.groups else m.group(0)


def extract(spec: Any, text: str | None) -> str | None:
    """The part of `text` that `spec` names, or None when it finds nothing. spec: None or "whole" (the text,
    stripped), "last_number", {"between": [START, END]} (stripped; END "" = to the end), {"regex": PATTERN}
    (group 1, or the whole match), {"json": "a.b.0"} (a string as-is, any other value as JSON)."""
    if text is None:
        return None
    if spec is None or spec == "whole":
        return text.strip()
    if spec == "last_number":
        return last_number(text)
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, arg), = spec.items()
        if kind == "between":
            return _between(text, arg[0], arg[1])
        if kind == "regex":
            return _regex(text, arg)
        if kind == "json":
            return _json_at(text, arg)
    raise ValueError(f"unknown extract {spec!r}: use one of whole, last_number, between, regex, json")


def describe(spec: Any) -> str:
    """A short name for an extract spec, for the reasons a check gives ("json:answer")."""
    if spec is None or isinstance(spec, str):
        return spec or "whole"
    (kind, arg), = spec.items()
    if kind == "between":
        return f"between:{arg[0]!r}..{arg[1]!r}"
    return f"{kind}:{arg}"
