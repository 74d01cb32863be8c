"""One side against the other on a run's held-out rows: both answers, their scores against the reference (EM/F1,
and the run's checks when it has some), and the loss of each on the reference answers."""
from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Callable

from ..checks import parse_checks, score_all, summarize
from ..config import GenSettings
from ..env.io import read_json_lines
from ..evals.evaluate import summary_line
from ..evals.rows import EVAL_COLUMNS, make_row
from ..runs.layout import EVAL_SET
from .engine import ChatEngine
from .labels import pair_labels
from .scoring import closeness_summary, closer, exact_match, is_short, token_f1


def compare_heldout(engine: ChatEngine, run_dir: str | Path | None = None, n: int = 8,
                    settings: GenSettings | None = None, progress: Callable[[float, str], None] | None = None,
                    against: "ChatEngine | str | None" = "base", labels: tuple[str, str] | None = None,
                    checks=None, cancel: threading.Event | None = None):
    """One side against the other on the run's held-out rows (the first n with an answer): `engine` with its
    adapter on is the right side; the left side is `against`: "base" (the same model, adapter off) or another
    ChatEngine on the same base (its adapter on). Both answer with the same settings and seed.

    Returns (DataFrame, stats). The DataFrame's columns: prompt, reference, <left>, <right> (the answers), then
    "<left> EM", "<left> F1", "<right> EM", "<right> F1" and "closer" (the side with the higher F1, or "tie"),
    blank for a reference over SHORT_REFERENCE_WORDS words. <left>/<right> are `labels`, by default "base" and
    "tuned", or the two adapters' names (pair_labels).

    stats: left, right (the labels), n, tokens, left_loss, right_loss, left_ppl, right_ppl (over the reference
    answers' tokens), short (rows scored), wins ({left: k, right: k, "tie": k}), left_em, left_f1, right_em,
    right_f1 (means over the short rows, NaN when none) and summary (closeness_summary). Against the base, also
    base_loss, tuned_loss, base_ppl, tuned_ppl (= the left and right ones).

    checks (studio.checks Checks or their mappings; None: the run's own, [] for none): each check's score of
    both answers as two more columns per check, "<left> <check>" and "<right> <check>", after "closer"; stats
    then also has "checks" ({check: {left: summarize(...), right: ...}}) and "check_summary" (one line per check,
    e.g. "right_answer: base 4% -> tuned 31% (95% CI 1-13% -> 20-44%), mean score 0.12 -> 0.40").

    stats["cut"]: {"left": [...], "right": [...]}, one bool per row: that answer hit Max new tokens (labels.mark_cut).
    cancel (set from another thread): stops between tokens; the rows answered whole by then are kept, scored and
    measured, and stats["cancelled"] says how many were asked for."""
    import pandas as pd

    other, (left, right) = _sides(engine, against, labels)
    examples, cells = _heldout_rows(engine, run_dir, n)
    checks = parse_checks(engine.cfg.checks if checks is None and engine.cfg is not None else checks)
    settings = settings or engine.default_settings()
    left_engine = other or engine
    rows, wins = [], {left: 0, right: 0, "tie": 0}
    scores: dict[str, list[float]] = {"left_em": [], "left_f1": [], "right_em": [], "right_f1": []}
    asked, cut = len(examples), []
    for i, msgs in enumerate(examples):
        if progress:  # the fraction of rows done, so "row 2 of 3" reads 33%, not 25%
            progress(i / asked, f"Answering held-out row {i + 1} of {asked}")
        row, side, was_cut = _answer_row(msgs, left_engine, engine, other is not None, settings, left, right, scores,
                                         cancel)
        if row is None:  # cancelled inside this row: its half answers are dropped
            break
        if side is not None:
            wins[side] += 1
        if checks:
            row.update(_check_cells(checks, msgs, cells[i], row[left], row[right], left, right))
        rows.append(row)
        cut.append(was_cut)
        if cancel is not None and cancel.is_set():
            break
    examples = examples[:len(rows)]
    if not examples:
        raise ValueError("Cancelled before the first held-out row was answered: press Compare to start again.")
    if progress:
        progress(1.0, f"All {len(examples)} rows answered; measuring the loss of the reference answers")
    # both sides cut the rows at the same length, so they are scored on the same tokens
    max_length = engine.cfg.train.max_length if engine.cfg is not None else None
    a_sum, a_n = left_engine.loss(examples, tuned=other is not None, max_length=max_length)
    b_sum, b_n = engine.loss(examples, tuned=True, max_length=max_length)
    left_loss = a_sum / a_n if a_n else float("nan")
    right_loss = b_sum / b_n if b_n else float("nan")
    stats = {"left": left, "right": right, "n": len(examples), "tokens": b_n,
             "left_loss": left_loss, "right_loss": right_loss, "left_ppl": _ppl(left_loss),
             "right_ppl": _ppl(right_loss), "short": len(scores["left_f1"]), "wins": wins,
             **{k: (sum(v) / len(v) if v else float("nan")) for k, v in scores.items()},
             "summary": closeness_summary(left, right, wins, len(examples)),
             "cancelled": asked if len(examples) < asked else 0,
             "cut": {"left": [c[0] for c in cut], "right": [c[1] for c in cut]}}
    if other is None:
        stats.update(base_loss=left_loss, tuned_loss=right_loss, base_ppl=stats["left_ppl"],
                     tuned_ppl=stats["right_ppl"])
    columns = ["prompt", "reference", left, right, f"{left} EM", f"{left} F1", f"{right} EM", f"{right} F1",
               "closer", *(f"{side} {c.name}" for c in checks for side in (left, right))]
    if checks:
        stats["checks"] = {c.name: {side: summarize([r[f"{side} {c.name}"] for r in rows]) for side in (left, right)}
                           for c in checks}
        stats["check_summary"] = [summary_line(c.name, left, right, *stats["checks"][c.name].values())
                                  for c in checks]
    return pd.DataFrame(rows, columns=columns), stats


def _check_cells(checks, msgs: list[dict], cells: dict, a: str, b: str, left: str, right: str) -> dict:
    """Each check's score of both answers, as the table's "<side> <check>" cells."""
    row = make_row(msgs, None, cells)
    sa, sb = score_all(checks, a, row), score_all(checks, b, row)
    return {**{f"{left} {k}": v for k, v in sa.items()}, **{f"{right} {k}": v for k, v in sb.items()}}


def _sides(engine: ChatEngine, against, labels) -> tuple[ChatEngine | None, tuple[str, str]]:
    """(the other engine or None for the base, (left label, right label)); ValueError when they cannot be compared."""
    other = None
    if isinstance(against, ChatEngine):
        if against.key != engine.key:
            raise ValueError(f"{against.label} is loaded on another base model than {engine.label}: only adapters "
                             f"of the same base can be compared.")
        other = against
        left, right = labels or pair_labels(other.spec, engine.spec)
    elif against in (None, "", "base"):
        left, right = labels or ("base", "tuned")
    else:
        raise ValueError(f"Compare against 'base' or another chat engine, not {against!r}.")
    if left == right:
        raise ValueError(f"The two sides need different names (both are '{left}').")
    return other, (left, right)


def _heldout_rows(engine: ChatEngine, run_dir: str | Path | None, n: int) -> tuple[list[list[dict]], list[dict]]:
    """The first n held-out conversations with an answer, and the other cells of their rows in the user's file
    (what a check's compare_to reads; {} each when the run kept none); ValueError saying what is missing."""
    from ..data import read_jsonl
    run_dir = Path(run_dir) if run_dir is not None else engine.run_dir
    if run_dir is None:
        raise ValueError("This adapter is not inside a run folder, so there are no held-out rows to compare on.")
    path = Path(run_dir) / EVAL_SET
    if not path.is_file():
        raise ValueError(f"{path} does not exist: the run keeps no held-out rows. Set 'Held-out fraction' above "
                         f"0 and train again.")
    if int(n) < 1:
        raise ValueError(f"Number of held-out rows to compare must be at least 1 (got {n}).")
    convs = read_jsonl(path)
    cells = read_json_lines(Path(run_dir) / EVAL_COLUMNS)
    if len(cells) != len(convs):
        cells = [{}] * len(convs)
    kept = [(m, c) for m, c in zip(convs, cells) if any(t["role"] == "assistant" for t in m)][:int(n)]
    if not kept:
        raise ValueError(f"{path} has no held-out rows with an answer: set 'Held-out fraction' above 0.")
    return [m for m, _ in kept], [c for _, c in kept]


def _answer_row(msgs: list[dict], left_engine: ChatEngine, engine: ChatEngine, left_tuned: bool,
                settings: GenSettings, left: str, right: str, scores: dict, cancel: threading.Event | None = None
                ) -> tuple[dict | None, str | None, tuple[bool, bool]]:
    """Both sides' answers to one held-out conversation, scored against its last answer when that is short.
    Returns (the table row, the closer side or "tie"; None when the reference is too long to score, whether each
    answer hit Max new tokens); a None row when `cancel` was set before both answers were whole."""
    last = max(j for j, t in enumerate(msgs) if t["role"] == "assistant")
    prompt_msgs = msgs[:last]
    reference = msgs[last]["content"]
    answers, cut = [], []
    for side, tuned in ((left_engine, left_tuned), (engine, True)):
        if cancel is not None and cancel.is_set():
            return None, None, (False, False)
        text, was_cut = side.answer(prompt_msgs, tuned=tuned, settings=settings, stop=cancel)
        if cancel is not None and cancel.is_set():  # stopped mid-answer: not a whole answer to show or score
            return None, None, (False, False)
        answers.append(text.strip())
        cut.append(was_cut)
    a, b = answers
    row = {"prompt": "\n\n".join(t["content"] for t in prompt_msgs if t["role"] == "user"), "reference": reference,
           left: a, right: b}
    if not is_short(reference):
        row.update({f"{left} EM": None, f"{left} F1": None, f"{right} EM": None, f"{right} F1": None, "closer": ""})
        return row, None, (cut[0], cut[1])
    em_a, f1_a, em_b, f1_b = exact_match(a, reference), token_f1(a, reference), \
        exact_match(b, reference), token_f1(b, reference)
    for k, v in zip(scores, (em_a, f1_a, em_b, f1_b)):
        scores[k].append(v)
    side = closer(left, right, f1_a, f1_b)
    row.update({f"{left} EM": em_a, f"{left} F1": f1_a, f"{right} EM": em_b, f"{right} F1": f1_b, "closer": side})
    return row, side, (cut[0], cut[1])


def _ppl(loss: float) -> float:
    if not math.isfinite(loss):
        return float("nan")
    return math.exp(min(loss, 700.0))  # exp(710) overflows a float


def save_csv(df, path: str | Path) -> Path:
    """The comparison table as UTF-8 CSV (with a BOM, so Excel shows non-ASCII text correctly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, encoding="utf-8-sig")
    return path
