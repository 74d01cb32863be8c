"""The Chat tab's held-out comparison as plain functions: both panes' models on the run's held-out rows (losses,
EM/F1 against short references, the run's checks when it has some, a CSV), and blind votes stepping through the
compared rows.
"""
from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path
from typing import Any

import pandas as pd

from studio import chat, runs
from studio.chat.labels import mark_cut, unmark
from studio.checks import parse_checks
from studio.config import GenSettings
from studio.evals.evaluate import latest_eval
from studio.runs import judgements

from ..common import scratch_dir
from .handlers import BASE, against_for, engine_for, with_system
from .votes import RNG, reveal_markdown, vote_labels

COMPARE_COLUMNS = ["prompt", "reference", "base", "tuned", "base EM", "base F1", "tuned EM", "tuned F1", "closer"]
# the scores' columns at 7%: at 5% of a 900 px window (34 px) "base EM" wrapped letter by letter (and see the
# smaller header font in assets/style.css)
COLUMN_WIDTHS = ["14%", "14%", "18%", "18%", "7%", "7%", "7%", "7%", "8%"]


def column_widths(n: int) -> list[str]:
    """The table's column widths for n columns: COLUMN_WIDTHS, the answers narrower to make room for the checks'
    score columns (two per check) when there are more."""
    extra = max(0, n - len(COLUMN_WIDTHS))
    if not extra:
        return COLUMN_WIDTHS[:n]
    each = 5 if extra <= 4 else 4
    scores = sum(int(w.rstrip("%")) for w in COLUMN_WIDTHS[4:])
    answers = max(8, (100 - 24 - scores - extra * each) // 2)  # the two answers share what is left
    return ["12%", "12%", f"{answers}%", f"{answers}%", *COLUMN_WIDTHS[4:], *[f"{each}%"] * extra]


def _score(x: Any, fmt: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def stats_markdown(stats: dict) -> str:
    """The comparison's numbers as a few readable lines: losses, closeness, mean EM/F1 over short references."""
    a, b = stats["left"], stats["right"]
    md = (f"Cancelled: these are the first {stats['n']} of the {stats['cancelled']} rows asked for.\n\n"
          if stats.get("cancelled") else "")
    md += (f"On **{stats['n']}** held-out rows ({stats.get('tokens', '?')} answer tokens): eval loss {a} "
          f"**{stats['left_loss']:.4f}** → {b} **{stats['right_loss']:.4f}**; perplexity {a} "
          f"**{stats['left_ppl']:.2f}** → {b} **{stats['right_ppl']:.2f}**.\n\n**{stats['summary']}**")
    if stats["short"]:
        md += (f"\n\nOver the {stats['short']} short references: exact match {a} **{stats['left_em']:.0%}** → {b} "
               f"**{stats['right_em']:.0%}**; token F1 {a} **{stats['left_f1']:.2f}** → {b} "
               f"**{stats['right_f1']:.2f}**.")
    if stats.get("check_summary"):
        md += (f"\n\nThe run's checks on these {stats['n']} rows (pass = score 1):\n\n"
               + "\n".join(f"- {line}" for line in stats["check_summary"]))
    return md


def latest_eval_markdown(run_dir: str | Path) -> str:
    """The run's newest `studio eval` result in a few lines ("" when it has none)."""
    ev = latest_eval(run_dir)
    if ev is None:
        return ""
    return (f"Latest evaluation on the checks ({Path(ev['path']).name}: {ev.get('rows_n', '?')} {ev.get('where', '')} "
            f"rows, greedy, up to {ev.get('max_new_tokens', '?')} new tokens, {ev.get('checkpoint', 'adapter')}):"
            f"\n\n" + "\n".join(f"- {line}" for line in ev["summary"]))


def _checks_of(run_dir: str | Path, engine) -> list | None:
    """The checks the comparison scores with: the run's own, else those of its latest evaluation, else None."""
    if engine.cfg is not None and engine.cfg.checks:
        return None  # compare_heldout reads the run's own
    ev = latest_eval(run_dir)
    try:
        return parse_checks(ev["checks"]) if ev and isinstance(ev.get("checks"), list) else []
    except ValueError:  # an evaluation written by another version: its checks are not shown
        return []


def compare(held: Any, run_dir: str, checkpoint: str | None, n: int, settings: GenSettings,
            root: str | Path | None, progress=None, against: str | None = BASE, cancel=None, mark: bool = False
            ) -> tuple[pd.DataFrame, str, Path, Any]:
    """(table, stats markdown, CSV path, engine handle) for "Compare on held-out prompts": the Base side
    (`against`: the base model or another adapter) against the Tuned side (the run's chosen adapter). The CSV has
    the scores as numbers; the table shows them rounded, blank for references too long to score. cancel (a
    threading.Event): set, it stops the comparison and keeps the rows answered whole (chat.compare_heldout). mark
    (the page asks for it): answers that hit Max new tokens end in "… [stopped at N tokens]" in the table shown (not
    in the CSV, nor in votes on the rows: heldout_vote_state takes the mark off)."""
    engine, held = engine_for(held, run_dir, checkpoint, root)
    other, held = against_for(held, against)
    df, stats = chat.compare_heldout(engine, run_dir, n=int(n), settings=settings, progress=progress,
                                     against=other, checks=_checks_of(run_dir, engine), cancel=cancel)
    name = runs.slug(Path(run_dir).name)
    if other != "base":
        name += f"-vs-{runs.slug(Path(other.run_dir or other.adapter_dir).name)}"
    csv = chat.save_csv(df, scratch_dir("compare") / f"{name}-heldout-compare.csv")
    shown = df.copy()
    for col, cut in zip(df.columns[2:4], (stats["cut"]["left"], stats["cut"]["right"]) if mark else ()):
        shown[col] = [mark_cut(a, settings.max_new_tokens) if c else a for a, c in zip(df[col], cut)]
    for col in df.columns[4:8]:
        shown[col] = [_score(x, ".0f" if col.endswith(" EM") else ".2f") for x in df[col]]
    for col in df.columns[9:]:  # the checks' scores
        shown[col] = [_score(x, ".2f") for x in df[col]]
    md = stats_markdown(stats)
    latest = latest_eval_markdown(run_dir)
    return shown, md + (f"\n\n{latest}" if latest else ""), csv, held


# --- blind votes on the held-out comparison's rows ---------------------------------------------------

def _prompt_text(messages: list[dict]) -> str:
    return "\n\n".join(t["content"] for t in messages if t["role"] == "user")


def heldout_prompts(run_dir: str | Path, n: int) -> list[list[dict]]:
    """The turns before the last answer of the run's first n held-out rows with an answer: the prompts
    chat.compare_heldout answers, in its order."""
    from studio.data import read_jsonl
    rows = [m for m in read_jsonl(Path(run_dir) / runs.EVAL_SET) if any(t["role"] == "assistant" for t in m)]
    out = []
    for msgs in rows[:int(n)]:
        last = max(j for j, t in enumerate(msgs) if t["role"] == "assistant")
        out.append(msgs[:last])
    return out


def heldout_vote_state(df: pd.DataFrame, run_dir: str, checkpoint: str | None, against: str | None,
                       settings: GenSettings) -> dict:
    """The held-out comparison's rows ready for blind voting (for a gr.State): each row's prompt (as the models
    were given it) and its (left, right) answers from `df` (compare's table: prompt, reference, left, right, ...),
    the two sides' names and the settings. ValueError when the run's held-out rows no longer match the table."""
    prompts = heldout_prompts(run_dir, len(df))
    if len(prompts) != len(df) or any(_prompt_text(p) != t for p, t in zip(prompts, df["prompt"])):
        raise ValueError("The run's held-out rows changed since this comparison: press Compare again.")
    # "answers" as the models gave them (what a vote saves), "shown" with the table's "[stopped at N tokens]" marks
    rows = [{"prompt": with_system(p, settings), "answers": [unmark(str(a)), unmark(str(b))], "shown": [str(a), str(b)]}
            for p, a, b in zip(prompts, df.iloc[:, 2], df.iloc[:, 3])]
    left, right = vote_labels(run_dir, checkpoint, against)
    return {"run_dir": str(run_dir), "rows": rows, "labels": [left, right], "order": [], "i": 0,
            "settings": dataclasses.asdict(settings), "seed": int(settings.seed)}


def heldout_start(hv: dict | None, rng: random.Random | None = None) -> dict:
    """Start (again) at the first row, with a fresh A/B order drawn for every row."""
    if not hv or not hv.get("rows"):
        raise ValueError("Compare on held-out prompts first: the votes are on its rows.")
    rng = rng or RNG
    return {**hv, "order": [rng.random() < 0.5 for _ in hv["rows"]], "i": 0}


def heldout_current(hv: dict | None) -> tuple[str, str, str] | None:
    """(prompt text, answer A, answer B) of the row to judge now, None when every row has a vote."""
    if not hv or not hv.get("order") or hv["i"] >= len(hv["rows"]):
        return None
    row = hv["rows"][hv["i"]]
    shown = row.get("shown", row["answers"])
    a, b = shown[::-1] if hv["order"][hv["i"]] else shown
    turns = [t for t in row["prompt"] if t["role"] != "system"]
    text = turns[0]["content"] if len(turns) == 1 else "\n\n".join(f"{t['role']}: {t['content']}" for t in turns)
    return text, a, b


def heldout_vote(hv: dict, vote: str) -> tuple[dict, str]:
    """Save the vote on the current row (source "heldout") and move to the next: (state, the reveal of the row
    just judged as Markdown)."""
    if heldout_current(hv) is None:
        raise ValueError("Every row has a vote: press 'Vote on these rows blind' to judge them again.")
    i = hv["i"]
    row = hv["rows"][i]
    swapped = hv["order"][i]
    answers = row["answers"][::-1] if swapped else row["answers"]
    models = hv["labels"][::-1] if swapped else hv["labels"]
    judgements.append_vote(hv["run_dir"], row["prompt"], *answers, *models, vote, settings=hv["settings"],
                           seed=hv["seed"], source="heldout")
    return {**hv, "i": i + 1}, reveal_markdown(models, vote, prefix=f"Row {i + 1}: ")

