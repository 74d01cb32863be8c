"""Checks scored on the data's own reference answers, before any training (`studio checks DATA --checks YAML` and
the Data tab's Checks panel): the pass rate of each check, the first rows that fail with what was extracted, and a
verdict sentence. A check that fails the references is almost always a wrong check (an extract that finds nothing,
a pattern that does not match the answers' form), so preflight only reports: it refuses nothing.

Also `try_it`, each check's detail for one typed answer against one row (the panel's "Try it").
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from ..checks import check_columns, detail, from_yaml, parse_checks, summarize
from ..checks.extract import describe
from .rows import columns_of, report_rows

SHOW = 3          # failing rows kept per check
REF_CHARS = 80    # a reference answer is shortened to this many characters where it is quoted


def shorten(text, limit: int = REF_CHARS) -> str:
    """One line of at most `limit` characters (new lines shown as spaces), for quoting an answer."""
    if text is None:
        return ""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 1] + "…"


def _verdict(name: str, n: int, passed: int, first: dict | None, check) -> str:
    """The sentence for a check that does not pass every reference ('' when it does, or with no rows)."""
    if n == 0 or first is None or passed == n:
        return ""
    if passed == 0:
        if first["extracted"] is None and first["why"].startswith("extract"):
            how = (f"`extract: {describe(check.extract)}` found nothing in row {first['row']}, whose answer is "
                   f"{first['reference']!r}")
        else:
            how = f"row {first['row']}: {first['why']} (its answer is {first['reference']!r})"
        return (f"{name} passes 0 of {n} reference answers: {how}. A check that fails the data's own answers is "
                f"almost always a wrong check: look at its extract and fields.")
    return f"{name} fails {n - passed} of {n} rows: first row {first['row']}: {first['why']}."


def _one(check, rows: list[dict], show: int) -> dict:
    scores, failing = [], []
    for r in rows:
        d = detail(check, r["reference"], r)
        scores.append(d["score"])
        if d["score"] < 1.0 and len(failing) < max(show, 1):
            failing.append({"row": r["row"], "reference": shorten(r["reference"]), "extracted": d["extracted"],
                            "why": d["why"] or f"scored {d['score']:.2f}"})
    out = {"name": check.name, "type": check.type, **summarize(scores)}
    out["verdict"] = _verdict(check.name, out["n"], out["passed"], failing[0] if failing else None, check)
    out["failing"] = failing[:show]
    return out


def preflight(checks, rows: list[dict], show: int = SHOW) -> dict:
    """Each check scored on every row's reference answer (rows without one are left out): {"n" (rows scored),
    "checks": [{"name", "type", "n", "passed", "pass_rate", "pass_lo", "pass_hi" (Wilson 95%), "mean", "mean_lo",
    "mean_hi", "failing": the first `show` failing rows as {"row", "reference" (shortened), "extracted", "why"},
    "verdict": a sentence, '' when every row passes}], "verdicts": the non-empty verdicts}. Raises ValueError only
    for checks that are not valid checks."""
    checks = parse_checks(checks)
    rows = [r for r in rows if r.get("reference") is not None]
    per = [_one(c, rows, show) for c in checks]
    return {"n": len(rows), "checks": per, "verdicts": [p["verdict"] for p in per if p["verdict"]]}


def try_it(checks, text: str, row: dict | None) -> list[dict]:
    """Each check's detail for `text` as the answer to `row`: [{"name", "type", "weight", "score", "extracted",
    "reference", "why"}]."""
    return [{"name": c.name, "type": c.type, "weight": c.weight, **detail(c, text or "", row)}
            for c in parse_checks(checks)]


def need_columns(checks, rows: list[dict], where: str = "the data") -> None:
    """ValueError when a check compares to a column the rows do not carry (saying, when they carry none besides
    the ones the format reads, that the checks can only compare to the answer)."""
    cols = columns_of(rows)
    if not cols:
        for c in parse_checks(checks):
            if c.column is not None:
                raise ValueError(f"check '{c.name}' compares to column '{c.column}', but {where} has no columns "
                                 f"besides the ones its format reads: checks can only compare to the answer here "
                                 f"(remove compare_to).")
    check_columns(checks, cols)


def load_rows(path: str | Path, format: str = "auto", checks=None) -> list[dict]:
    """The rows of a data file that checks score (studio.data.read_examples, then rows.report_rows); with
    `checks`, ValueError when one compares to a column the file does not have. Raises DataError (a ValueError)
    for a file that cannot be read."""
    from ..data import read_examples
    report = read_examples(path, format or "auto")
    rows = report_rows(report)
    if checks is not None:
        need_columns(checks, rows, Path(path).name)
    return rows


# --- the command line -----------------------------------------------------------------------------

def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def table_lines(result: dict) -> list[str]:
    """The per-check table as aligned text lines."""
    head = ["check", "type", "passed", "pass rate", "95% interval", "mean score"]
    body = [[p["name"], p["type"], f"{p['passed']}/{p['n']}", _pct(p["pass_rate"]),
             f"{_pct(p['pass_lo'])}–{_pct(p['pass_hi'])}" if p["n"] else "–",
             "–" if math.isnan(p["mean"]) else f"{p['mean']:.3f}"] for p in result["checks"]]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body]]


def report_text(result: dict, name: str) -> str:
    """What `studio checks` prints: the table, the verdicts and each failing check's first failing rows."""
    lines = [f"{result['n']} reference answers in {name} scored with {len(result['checks'])} check(s).", ""]
    if not result["n"]:
        lines.append("The file has no rows with an answer to score: checks score the answers (the assistant part).")
        return "\n".join(lines)
    lines += table_lines(result)
    for p in result["checks"]:
        if not p["verdict"]:
            continue
        lines += ["", p["verdict"]]
        for f in p["failing"]:
            got = "nothing" if f["extracted"] is None else repr(shorten(f["extracted"], 60))
            lines.append(f"  row {f['row']}: extracted {got}; {f['why']} — answer {f['reference']!r}")
    if not result["verdicts"]:
        lines += ["", "Every check passes every reference answer."]
    return "\n".join(lines)


def cli(a) -> int:
    """`studio checks FILE --checks YAML [--format auto] [--show 3]`: 0 with the report, 2 with one `error:` line
    for an unreadable data file, checks file or checks."""
    from ..data import DataError
    try:
        try:
            text = Path(a.checks).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeError) as e:
            raise ValueError(f"cannot read the checks file {a.checks}: {getattr(e, 'strerror', None) or e}.") from None
        checks = from_yaml(text)
        if not checks:
            raise ValueError(f"{Path(a.checks).name} holds no checks: write a list of checks (or a checks: key).")
        rows = load_rows(a.file, getattr(a, "format", "auto"), checks)
        show = max(0, int(getattr(a, "show", SHOW) if getattr(a, "show", None) is not None else SHOW))
        result = preflight(checks, rows, show)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot read {a.file}: {e.strerror or e}.", file=sys.stderr)
        return 2
    print(report_text(result, Path(a.file).name))
    return 0
