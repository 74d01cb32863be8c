"""Base vs tuned (or one run against another) on a run's checks: greedy answers of both sides to the run's held-out
prompts (its first training prompts when it kept none), each scored by every check; per side and check the pass rate
(score 1) and the mean score with 95% intervals; written to RUN/evals/<YYYYmmdd-HHMMSS>.json.

`studio eval RUN` runs it (`cli`), the trainer runs it at the end of a run whose config has checks
(`evaluate_after_training`), and the model card and the Chat tab read the newest result (`latest_eval`).
The chat engine (torch, transformers, peft) is imported only when an evaluation runs.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable

from ..checks import Check, check_columns, from_yaml, parse_checks, score_all, summarize
from ..env.io import read_json_dict, write_text
from ..runs.layout import CONFIG, FINAL, is_run, run_name
from .rows import columns_of, run_rows

EVALS = "evals"       # RUN/evals/<YYYYmmdd-HHMMSS>.json, one file per evaluation
MAX_ROWS = 50         # rows evaluated when none are asked for: a 95% interval of about +-14 points at 50
# new tokens of an answer at the end of training (the rows: train.checks_eval_rows)
AFTER_TRAINING = {"cpu": 128, "gpu": 256}

Progress = Callable[[float, str], None]


class EvalCancelled(ValueError):
    """The evaluation was stopped between rows (cancel() said so); nothing was written."""


# --- what is evaluated ---------------------------------------------------------------------------------

def _run_checks(run_dir: Path, checks) -> list[Check]:
    """The checks to score with: `checks` (Checks, check mappings, or YAML text), else the run's config's."""
    if isinstance(checks, str):
        found = from_yaml(checks)
    elif checks is not None:
        found = parse_checks(list(checks))
    else:
        from ..config import RunConfig
        found = RunConfig.load(run_dir / CONFIG).check_list()
    if not found:
        raise ValueError(f"Run {run_dir.name} has no checks to score answers with: add a checks: section to its "
                         f"config (the Data tab's Checks panel writes one), or give a YAML file of checks "
                         f"(studio eval RUN --checks FILE).")
    return found


def _adapter_name(run_dir: Path, checkpoint: str | None) -> str:
    """"adapter" (the final one), "checkpoint-N", or "best" -> the adapter with the lowest eval loss."""
    if checkpoint == "best":
        from ..runs.results import best_adapter
        best = best_adapter(run_dir)
        return best.name if best else FINAL
    return checkpoint or FINAL


def _engines(run_dir: Path, checkpoint: str, against, device: str | None):
    """(tuned engine, other engine or None for the base, (left label, right label))."""
    from ..chat.engine import ChatEngine
    from ..chat.labels import pair_labels

    engine = ChatEngine.load(run_dir, checkpoint, device=device)
    if against in (None, "", "base"):
        return engine, None, ("base", "tuned")
    other = ChatEngine.load(Path(against), None, like=engine)
    return engine, other, pair_labels(other.spec, engine.spec)


def _answer(engine, prompt: list[dict], tuned: bool, settings) -> tuple[str, bool]:
    """(the greedy answer, whether it was cut at max_new_tokens rather than ended by the model)."""
    ids = engine.generate_ids(prompt, tuned=tuned, settings=settings)
    tok = engine.tokenizer
    cut = len(ids) >= settings.max_new_tokens and ids[-1] not in set(tok.all_special_ids)
    return tok.decode(ids, skip_special_tokens=True).strip(), cut


# --- the evaluation ---------------------------------------------------------------------------------------

def evaluate_run(run_dir: str | Path, checks=None, against: str | Path = "base", rows: int | None = None,
                 checkpoint: str | None = FINAL, max_new_tokens: int = 256, progress: Progress | None = None,
                 cancel: Callable[[], bool] | None = None, device: str | None = None) -> tuple[Path, dict]:
    """Evaluate a run's adapter (`checkpoint`: "adapter", "best" or "checkpoint-N") against the base (`against`
    "base") or another run's final adapter (`against`: its folder, or an adapter folder) on `checks` (default:
    the run's own; ValueError with a sentence when it has none), over its first `rows` held-out rows (default: all,
    at most MAX_ROWS; training rows when it kept none). Both sides answer greedily with the same settings.
    progress(frac, text) is told each row; cancel() is asked between rows (True: EvalCancelled, nothing written).
    Returns (the JSON file written, its content); see the module doc and `_result` for the fields."""
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise ValueError(f"{run_dir} is not a run folder (no {CONFIG} in it).")
    found = _run_checks(run_dir, checks)
    if rows is not None and int(rows) < 1:
        raise ValueError(f"The number of rows to evaluate must be at least 1 (got {rows}).")
    examples, where = run_rows(run_dir, int(rows) if rows else MAX_ROWS)
    check_columns(found, columns_of(examples))
    name = _adapter_name(run_dir, checkpoint)
    say = progress or (lambda f, t: None)
    say(0.0, "Loading the model")
    engine, other, (left, right) = _engines(run_dir, name, against, device)
    settings = engine.default_settings(temperature=0.0, max_new_tokens=int(max_new_tokens))
    left_engine = other or engine
    done = []
    for i, row in enumerate(examples):
        if cancel is not None and cancel():
            raise EvalCancelled(f"Evaluation stopped after {i} of {len(examples)} rows: nothing was written.")
        say(i / len(examples), f"Answering row {i + 1} of {len(examples)} ({where})")
        a, a_cut = _answer(left_engine, row["prompt"], other is not None, settings)
        b, b_cut = _answer(engine, row["prompt"], True, settings)
        done.append({"row": row["row"], "prompt": row["prompt"], "reference": row["reference"],
                     "answers": {left: a, right: b},
                     "scores": {left: score_all(found, a, row), right: score_all(found, b, row)},
                     "cut": {left: a_cut, right: b_cut}})
    result = _result(run_dir, found, against, name, where, settings.max_new_tokens, (left, right), done)
    path = _write(run_dir, result)
    say(1.0, f"Written to {path}")
    return path, result


def _result(run_dir: Path, checks: list[Check], against, checkpoint: str, where: str, max_new_tokens: int,
            labels: tuple[str, str], rows: list[dict]) -> dict:
    """The JSON written: run, against, checkpoint, time, where, rows_n, max_new_tokens, checks, sides ({label:
    {check: summarize(...)}}), rows and summary (one line per check)."""
    left, right = labels
    sides = {side: {c.name: summarize([r["scores"][side][c.name] for r in rows]) for c in checks}
             for side in labels}
    return {"run": str(run_dir), "against": "base" if against in (None, "", "base") else str(against),
            "checkpoint": checkpoint, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "where": where,
            "rows_n": len(rows), "max_new_tokens": max_new_tokens, "checks": [c.to_dict() for c in checks],
            "sides": sides, "rows": rows,
            "summary": [summary_line(c.name, left, right, sides[left][c.name], sides[right][c.name])
                        for c in checks]}


def _write(run_dir: Path, result: dict) -> Path:
    folder = run_dir / EVALS
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, k = folder / f"{stamp}.json", 2
    while path.exists():  # two evaluations in one second keep both
        path, k = folder / f"{stamp}-{k}.json", k + 1
    return write_text(path, json.dumps(result, ensure_ascii=False, indent=1) + "\n")


# --- reading and telling ---------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _interval(s: dict) -> str:
    return f"{100 * s['pass_lo']:.0f}-{100 * s['pass_hi']:.0f}%"


def _num(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def summary_line(name: str, left: str, right: str, a: dict, b: dict) -> str:
    """E.g. "right_answer: base 4% -> tuned 31% (95% CI 1-13% -> 20-44%), mean score 0.12 -> 0.40", from two
    studio.checks.summarize results."""
    return (f"{name}: {left} {_pct(a['pass_rate'])} -> {right} {_pct(b['pass_rate'])} (95% CI {_interval(a)} -> "
            f"{_interval(b)}), mean score {_num(a['mean'])} -> {_num(b['mean'])}")


def eval_files(run_dir: str | Path) -> list[Path]:
    """The run's evaluation files, oldest first (their names are their times)."""
    folder = Path(run_dir) / EVALS
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def latest_eval(run_dir: str | Path) -> dict | None:
    """The newest evaluation that reads back (with "path" added: its file), or None when the run has none."""
    for path in reversed(eval_files(run_dir)):
        d = read_json_dict(path)
        if isinstance(d.get("summary"), list) and isinstance(d.get("sides"), dict):
            return {**d, "path": str(path)}
    return None


def table_lines(result: dict) -> list[str]:
    """Per check and side: passed/n, pass rate with its 95% interval, mean score with its interval."""
    out = [f"{'check':<20} {'side':<24} {'passed':>9} {'pass rate (95% CI)':>22} {'mean score (95% CI)':>22}"]
    for c in result["checks"]:
        for side, per in result["sides"].items():
            s = per[c["name"]]
            rate = f"{_pct(s['pass_rate'])} ({_interval(s)})"
            mean = f"{_num(s['mean'])} ({_num(s['mean_lo'])}-{_num(s['mean_hi'])})"
            out.append(f"{c['name'][:20]:<20} {side[:24]:<24} {s['passed']:>4}/{s['n']:<4} {rate:>22} {mean:>22}")
    return out


# --- the command and the trainer's call ------------------------------------------------------------------

def cli(a) -> int:
    """`studio eval RUN [--checks YAML] [--against base|RUN] [--rows N] [--checkpoint ...] [--max-new-tokens N]`:
    the summary lines and the per-check table, then (last line) the JSON file's path. Errors: one line, exit 2."""
    from ..models import ModelError
    from ..runs import RunError, find_run

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    def say(frac: float, text: str) -> None:
        print(f"[{frac * 100:3.0f}%] {text}", file=sys.stderr, flush=True)

    try:
        run_dir = find_run(a.run, a.runs_dir)
        against = "base" if a.against in (None, "", "base") else find_run(a.against, a.runs_dir)
        checks = None
        if a.checks:
            p = Path(a.checks).expanduser()
            if not p.is_file():
                return fail(f"Checks file {p} does not exist{' (it is a folder)' if p.is_dir() else ''}: give a "
                            f"YAML file with a list of checks (or a config.yaml with a checks: section).")
            checks = from_yaml(p.read_text(encoding="utf-8", errors="replace"))
            if not checks:
                return fail(f"{p} holds no checks: write them as a YAML list, or under a checks: key.")
        path, result = evaluate_run(run_dir, checks, against, a.rows, a.checkpoint, a.max_new_tokens, progress=say)
    except (RunError, ModelError, ValueError, FileNotFoundError) as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"Could not read or write what the evaluation needs: {e}")
    print(f"{run_name(run_dir)}: {result['rows_n']} {result['where']} rows, greedy, up to {result['max_new_tokens']} "
          f"new tokens ({result['checkpoint']})")
    for line in result["summary"]:
        print(line)
    cut = {side: sum(r["cut"][side] for r in result["rows"]) for side in result["sides"]}
    if any(cut.values()):
        print("Answers cut at the token limit: " + ", ".join(f"{s} {k}" for s, k in cut.items()))
    print("\n".join(table_lines(result)))
    print(path)
    return 0


def evaluate_after_training(run_dir: str | Path, cfg, device_is_cpu: bool) -> Path | None:
    """The trainer's call once the adapter is saved: base vs tuned on the run's own checks, over at most
    train.checks_eval_rows rows (0: none) with 128 new tokens on a CPU (256 on a GPU); the summary lines go to the
    log and a "checks_eval" event to metrics.jsonl. Returns the file written, or None (nothing to check, or it
    failed: a warning says why; the training itself has succeeded)."""
    from ..runs.events import append_metrics

    log = logging.getLogger("studio.train")
    run_dir = Path(run_dir)
    try:
        checks, n = cfg.check_list(), cfg.train.checks_eval_rows
        if not checks or n < 1:
            return None
        tokens = AFTER_TRAINING["cpu" if device_is_cpu else "gpu"]
        log.info("Evaluating base vs tuned on %d check(s): up to %d rows, %d new tokens each.", len(checks), n,
                 tokens)
        path, result = evaluate_run(run_dir, checks, rows=n, max_new_tokens=tokens,
                                    device="cpu" if device_is_cpu else None)
        for line in result["summary"]:
            log.info("Checks (%d %s rows): %s", result["rows_n"], result["where"], line)
        log.info("Evaluation written to %s.", path)
        append_metrics(run_dir, {"kind": "checks_eval", "file": path.name, "summary": result["summary"],
                                 "time": time.time()})
        return path
    except Exception as e:  # noqa: BLE001 — the run has finished and its adapter is saved: a failed evaluation
        log.warning("The evaluation on the checks failed (%s: %s); the run itself finished and its adapter is "
                    "saved. `studio eval %s` tries again.", type(e).__name__, e, run_dir)
        return None
