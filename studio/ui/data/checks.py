"""The Checks panel's handlers (Data tab): the add-a-check form turned into a check mapping, the list of checks and
its YAML, the preflight of the checks on the tab's file (its own reference answers) and "Try it" (a typed answer
scored against one row). Plain functions on plain values, tested without a browser; the checks themselves are
studio.checks, the scoring of the references studio.evals.preflight.

The checks live in a gr.State (a list of check mappings, as a run config's `checks:` holds them); the Train tab's
Start puts them into the RunConfig it builds.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from studio import data as sdata
from studio.checks import FIELDS, NORMALIZERS, TYPES, from_yaml, parse_checks, to_yaml
from studio.checks.extract import describe
from studio.env.safeyaml import load_yaml
from studio.evals.preflight import need_columns, preflight, shorten, try_it
from studio.evals.rows import columns_of, report_rows

from .handlers import checked_report

CHECK_ROWS = 10_000  # rows the panel scores (~13 µs a row and check: 5 checks ~0.7 s); `studio checks` scores all
EXTRACTS = {"whole": "the whole answer", "last_number": "the last number", "between": "the text between two markers",
            "regex": "a regular expression's group 1 (or whole match)", "json": "a value in the answer's JSON"}
EXTRACT_ARGS = {"between": ("Start marker", "End marker (empty: to the end)"), "regex": ("Pattern", ""),
                "json": ("JSON path, e.g. answer or items.0.name", "")}
# field -> (widget kind, label, help); kinds: bool, number, int, text, list (comma-separated), lines (one per line),
# multi (normalize steps), choice, column (a data column), yaml (a mapping as YAML or JSON)
FIELD_UI: dict[str, tuple[str, str, str]] = {
    "normalize": ("multi", "Normalize both sides", "Applied in this order before comparing (strip alone by default)."),
    "compare_to": ("column", "Compare to column", "A column of your file to compare with, instead of the answer "
                                                  "(empty: the row's own answer)."),
    "tolerance": ("number", "Tolerance", "How far off a number may be, absolutely (empty: exactly equal)."),
    "relative": ("number", "Relative tolerance", "How far off, as a fraction of the reference (0.01 = 1%)."),
    "pattern": ("text", "Pattern", "A Python regular expression the answer must match."),
    "mode": ("choice", "Match", "search: anywhere in the answer; fullmatch: the whole answer."),
    "ignore_case": ("bool", "Ignore case", ""),
    "dotall": ("bool", ". matches new lines too", ""),
    "expect": ("bool", "Passes when it matches", "Off: the answer passes when the pattern does NOT match."),
    "required": ("list", "Required keys", "Keys the JSON object must have, comma-separated."),
    "schema": ("yaml", "JSON Schema", "A schema the JSON must be valid under, as JSON or YAML (e.g. {type: object})."),
    "same_as_reference": ("bool", "Equal to the reference's JSON", ""),
    "all": ("lines", "Must contain every one of", "One text per line."),
    "any": ("lines", "Must contain at least one of", "One text per line."),
    "max_words": ("int", "Max words", ""), "max_chars": ("int", "Max characters", ""),
    "min_words": ("int", "Min words", ""), "min_chars": ("int", "Min characters", ""),
}
BOOL_DEFAULTS = {"dotall": True, "expect": True}  # the others default to false
CHOICES = {"mode": ["search", "fullmatch"], "normalize": list(NORMALIZERS)}
# a field's label where one type reads it differently
LABELS = {("not_contains", "all"): "Must contain none of"}
HIDDEN = {("not_contains", "any")}  # not_contains reads any as all: one box is enough
LIST_COLUMNS = ["name", "type", "weight", "extract", "fields"]
PF_COLUMNS = ["check", "type", "passed", "pass rate", "95% interval", "mean score"]
FAIL_COLUMNS = ["check", "row", "answer", "extracted", "why"]
TRY_COLUMNS = ["check", "score", "extracted", "reference", "why"]


def all_fields() -> list[str]:
    """Every type's own fields, once each, in the order FIELDS names them (the form has one input per field)."""
    return list(dict.fromkeys(f for fs in FIELDS.values() for f in fs))


def field_kind(name: str) -> str:
    return FIELD_UI.get(name, ("yaml",))[0]


def field_default(name: str):
    kind = field_kind(name)
    if kind == "bool":
        return BOOL_DEFAULTS.get(name, False)
    if kind == "multi":
        return ["strip"]
    if kind in ("number", "int"):
        return None
    return "search" if name == "mode" else ""


def field_shown(typ: str) -> dict[str, tuple[bool, str]]:
    """field -> (visible, label) for the type chosen in the form."""
    own = set(FIELDS.get(typ, ()))
    return {f: (f in own and (typ, f) not in HIDDEN, LABELS.get((typ, f), FIELD_UI.get(f, ("", f))[1]))
            for f in all_fields()}


# --- the form -> a check mapping ------------------------------------------------------------------

def _extract(kind: str, a: str, b: str):
    kind = kind or "whole"
    if kind == "whole":
        return None
    if kind == "last_number":
        return "last_number"
    if kind == "between":
        if not a:
            raise ValueError("Extract between needs a start marker (the end marker may be empty: to the end).")
        return {"between": [a, b or ""]}
    if not a:
        raise ValueError(f"Extract {kind} needs {EXTRACT_ARGS[kind][0].split(',')[0].lower()}.")
    return {kind: a}


def _field_value(name: str, value, label: str):
    """A form input as the check's field value; None to leave the field out (empty, or its default)."""
    kind = field_kind(name)
    if kind == "bool":
        return None if bool(value) == BOOL_DEFAULTS.get(name, False) else bool(value)
    if kind == "multi":
        steps = [s for s in NORMALIZERS if s in (value or [])]  # the order of NORMALIZERS, whatever was ticked
        return None if steps == ["strip"] else steps
    if kind in ("number", "int"):
        # a cleared gr.Number comes back as 0 from the page: 0 is the default of tolerance and relative, and no
        # length limit can be 0, so 0 means "not set"
        if value is None or value == "" or value == 0:
            return None
        x = float(value)
        if kind == "int":
            if not x.is_integer():
                raise ValueError(f"{label} must be a whole number, not {value}.")
            return int(x)
        return int(x) if x.is_integer() else x
    text = str(value or "")
    if kind == "list":
        items = [s.strip() for s in text.split(",") if s.strip()]
        return items or None
    if kind == "lines":
        items = [s.strip() for s in text.splitlines() if s.strip()]
        return items or None
    if kind == "yaml":
        if not text.strip():
            return None
        return load_yaml(text, label)  # the one loader of user YAML: no aliases, bounded size and depth
    if name == "mode":
        return None if text in ("", "search") else text
    return text or None


def form_check(checks: list | None, name: str, typ: str, weight, extract: str, extract_a: str, extract_b: str,
               values: dict) -> dict:
    """The add-a-check form as one check mapping (only the chosen type's fields, defaults left out). An empty name
    becomes the type's name (numbered when taken). Raises ValueError with a sentence."""
    if typ not in TYPES:
        raise ValueError(f"Pick the check's type: one of {', '.join(TYPES)}.")
    taken = {c.get("name") for c in checks or []}
    name = (name or "").strip()
    if not name:
        name = next(n for n in (typ if i == 1 else f"{typ}_{i}" for i in range(1, len(taken) + 3)) if n not in taken)
    item: dict = {"name": name, "type": typ}
    if weight is not None and weight != "" and float(weight) != 1:
        item["weight"] = float(weight)
    ext = _extract(extract, extract_a or "", extract_b or "")
    if ext is not None:
        item["extract"] = ext
    shown = field_shown(typ)
    for f in FIELDS[typ]:
        if shown[f][0]:
            v = _field_value(f, values.get(f), shown[f][1])
            if v is not None:
                item[f] = v
    return item


def add(checks: list | None, item: dict) -> list[dict]:
    """The checks with `item` added, validated (ValueError naming the check)."""
    return [c.to_dict() for c in parse_checks([*(checks or []), item])]


def remove(checks: list | None, name: str | None) -> list[dict]:
    if not name:
        raise ValueError("Pick the check to remove.")
    return [c for c in checks or [] if c.get("name") != name]


def apply_yaml(text: str) -> list[dict]:
    """The checks the YAML box holds (a list, or a mapping with checks:); ValueError with the sentence."""
    return [c.to_dict() for c in from_yaml(text or "")]


def yaml_of(checks: list | None) -> str:
    return to_yaml(checks or []) if checks else "checks: []\n"


def list_frame(checks: list | None) -> pd.DataFrame:
    rows = []
    for c in parse_checks(checks or []):
        rows.append([c.name, c.type, f"{c.weight:g}", describe(c.extract),
                     "; ".join(f"{k}: {v}" for k, v in c.fields.items())])
    return pd.DataFrame(rows, columns=LIST_COLUMNS)


# --- the data the checks are scored on ------------------------------------------------------------

@dataclass
class Rows:
    """The rows of the Data tab's file that checks score (the first CHECK_ROWS), or why there are none."""
    rows: list = field(default_factory=list)
    total: int = 0
    name: str = ""
    message: str = ""   # why there are no rows ('' when there are)
    error: bool = False  # the message is an error (the file cannot be read), not a state
    report: object = None


def _part(report, i: int, j: int):
    """The examples i..j of a report, as report_rows reads one (the cells come from the same table)."""
    return SimpleNamespace(examples=report.examples[i:j], rows=report.rows[i:j], path=report.path,
                           mapping=report.mapping, table=report.table)


def data_rows(state: dict | None, limit: int = CHECK_ROWS) -> Rows:
    if not state or not state.get("path"):
        return Rows(message="No usable data yet: the checks are scored on the file checked above.")
    try:
        report = checked_report(state)
    except (sdata.DataError, ValueError, OSError) as e:
        return Rows(message=str(getattr(e, "strerror", None) or e), error=True)
    if report is None:
        return Rows(message="This file holds preference pairs: checks score the answers of instruction data "
                            "(prompts and answers). Pick such a file to score them on.")
    n = len(report.examples)
    rows = report_rows(report if n <= limit else _part(report, 0, limit))
    return Rows(rows, n, Path(report.path).name, report=report)


def row_at(data: Rows, number) -> dict | None:
    """The row whose source row number is `number`, or None."""
    report = data.report
    if report is None or number is None:
        return None
    try:
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        return None
    i = bisect.bisect_left(report.rows, number)
    if i >= len(report.rows) or report.rows[i] != number:
        return None
    return report_rows(_part(report, i, i + 1))[0]


# --- what the panel shows -------------------------------------------------------------------------

def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


@dataclass
class Preflight:
    note: str
    table: pd.DataFrame
    verdicts: str
    failing: pd.DataFrame
    error: str = ""     # a sentence for the error box ('' for none)
    columns: list = field(default_factory=list)  # the file's other columns (compare_to choices)


def preflight_view(checks: list | None, state: dict | None) -> Preflight:
    """The preflight of `checks` on the Data tab's file: pass rate per check, the verdicts, the failing rows."""
    empty = Preflight("", pd.DataFrame(columns=PF_COLUMNS), "", pd.DataFrame(columns=FAIL_COLUMNS))
    data = data_rows(state)
    if data.message:
        empty.error, empty.note = (data.message, "") if data.error else ("", data.message)
        return empty
    empty.columns = columns_of(data.rows)
    if not any(r["reference"] is not None for r in data.rows):
        empty.note = (f"The rows of {data.name} have no answers (read as {data.report.format}): checks score "
                      f"answers, so they need prompts with answers to be scored on.")
        return empty
    if not checks:
        empty.note = f"No checks yet: add one above (or write them as YAML) to score {data.name}'s own answers."
        return empty
    try:
        need_columns(checks, data.rows, data.name)
        res = preflight(checks, data.rows)
    except ValueError as e:
        empty.error = str(e)
        return empty
    of = f"the first {len(data.rows):,} of {data.total:,}" if data.total > len(data.rows) else f"the {res['n']:,}"
    note = (f"Scored on {of} reference answers of **{data.name}**: a check that fails the file's own answers is "
            f"almost always a wrong check.")
    if data.total > len(data.rows):
        note += " `studio checks FILE --checks YAML` scores them all."
    table = pd.DataFrame([[p["name"], p["type"], f"{p['passed']}/{p['n']}", _pct(p["pass_rate"]),
                           f"{_pct(p['pass_lo'])}–{_pct(p['pass_hi'])}" if p["n"] else "–",
                           "–" if math.isnan(p["mean"]) else f"{p['mean']:.3f}"] for p in res["checks"]],
                         columns=PF_COLUMNS)
    verdicts = ("\n".join(f"- ⚠ {v}" for v in res["verdicts"]) if res["verdicts"]
                else f"✓ Every check passes all {res['n']:,} reference answers.")
    failing = pd.DataFrame([[p["name"], f["row"], f["reference"], "(nothing)" if f["extracted"] is None
                             else shorten(f["extracted"], 60), f["why"]]
                            for p in res["checks"] for f in p["failing"]], columns=FAIL_COLUMNS)
    return Preflight(note, table, verdicts, failing, "", empty.columns)


def row_text(state: dict | None, number) -> tuple[str, str]:
    """(the row's prompt and answer as Markdown, its answer) for Try it; ('why not', '') for no such row."""
    data = data_rows(state, limit=0)
    if data.message:
        return data.message, ""
    row = row_at(data, number)
    if row is None:
        first, last = (data.report.rows[0], data.report.rows[-1]) if data.report.rows else (1, 1)
        return (f"Row {number} of {data.name} is not an example (skipped, or past the end): its examples are rows "
                f"{first} to {last}."), ""
    asked = next((t["content"] for t in reversed(row["prompt"]) if t.get("role") == "user"), "")
    return f"**Row {row['row']}** — prompt: {shorten(asked, 300)}\n\nIts answer: `{shorten(row['reference'], 300)}`", \
        row["reference"] or ""


def try_frame(checks: list | None, state: dict | None, number, text: str) -> tuple[pd.DataFrame, str]:
    """(each check's score of `text` against the row, '' or an error sentence)."""
    if not checks:
        return pd.DataFrame(columns=TRY_COLUMNS), "Add a check first: Try it scores an answer with the checks."
    data = data_rows(state, limit=0)
    if data.message:
        return pd.DataFrame(columns=TRY_COLUMNS), data.message
    row = row_at(data, number)
    if row is None:
        return pd.DataFrame(columns=TRY_COLUMNS), row_text(state, number)[0]
    try:
        need_columns(checks, [row], data.name)
        got = try_it(checks, text or "", row)
    except ValueError as e:
        return pd.DataFrame(columns=TRY_COLUMNS), str(e)
    return pd.DataFrame([[g["name"], f"{g['score']:.2f}", "(nothing)" if g["extracted"] is None
                          else shorten(g["extracted"], 80), "" if g["reference"] is None
                          else shorten(g["reference"], 80), g["why"]] for g in got], columns=TRY_COLUMNS), ""
