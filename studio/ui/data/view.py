"""What the Data tab shows for one file, as plain values: the DataView, the summary, the problems table, the
preview, the token-length histogram and note, and one example (or one preference pair) with its parts labelled.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from studio import data as sdata
from studio.config import field_names

ROLES = field_names("columns")  # instruction, input, output, prompt, completion, messages, text, system
# Which column roles each format reads (the rest are hidden so the mapping stays short).
FORMAT_ROLES = {
    "alpaca": ("instruction", "input", "output", "system"),
    "messages": ("messages", "system"),
    "sharegpt": ("messages", "system"),
    "prompt_completion": ("prompt", "completion", "system"),
    "text": ("text",),
}
PREVIEW_ROWS = 20
CELL_CHARS = 160
TRAINED = "trained on (assistant)"
CUT = "cut off (past max length)"
CHOSEN = "chosen (DPO makes it more likely)"
REJECTED = "rejected (DPO makes it less likely)"
# The example's legend lists only the parts its stage shows, each in its own colour: SFT shows what is trained on
# and what is cut; DPO shows the chosen and the rejected answer (blue, not the SFT green: they are not "trained on"
# the same way).
SFT_COLOURS = {TRAINED: "#22c55e", CUT: "#9ca3af"}
PAIR_COLOURS = {CHOSEN: "#4f7cff", REJECTED: "#e5484d"}
SKIPPED = "skipped"  # the Problems table's word for a row that is left out (Issue severity "error")
CUT_LISTED = 200  # rows named as cut in the Problems table; more are counted in one line
DPO_NOTE = ("This file trains **DPO** (preference tuning: the model learns to prefer the chosen answer over the "
            "rejected one) **on top of an SFT run**: start a DPO run from a finished SFT run's adapter on the Train "
            "tab. It is not SFT data; to teach answers by example, use a file of prompts and answers.")
ISSUE_COLUMNS = ["row", "column", "problem", "what to do", "severity"]
NO_DATA = "No data yet"


@dataclass
class DataView:
    """Everything the tab shows for one file; `config` is None when the file cannot be trained on."""
    ok: bool
    message: str
    format: str = "auto"
    mapping: dict = field(default_factory=dict)
    columns: list = field(default_factory=list)
    preview: pd.DataFrame = field(default_factory=pd.DataFrame)
    issues: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ISSUE_COLUMNS))
    hist: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(  # typed: gradio picks axis types by dtype
        {"tokens": pd.Series(dtype=str), "examples": pd.Series(dtype=int), "part": pd.Series(dtype=str)}))
    hist_order: list = field(default_factory=list)
    token_note: str = ""
    example: list = field(default_factory=list)
    example_note: str = ""
    n_examples: int = 0
    max_length: int = 512
    config: dict | None = None
    hist_label: str = ""  # the chart's title; "" for the SFT one
    preference: dict | None = None  # preference_state: what the file trains (sft, or the dpo stage)
    preflight: str = ""  # the chat template preflight: how many examples' answers the assistant mask finds
    colours: dict = field(default_factory=lambda: dict(SFT_COLOURS))  # the example's legend


def summary_md(report: sdata.DatasetReport) -> str:
    mapping = ", ".join(f"{k} ← `{v}`" for k, v in report.mapping.used().items())
    # One name for the concept on every tab: the run keeps the rows as chat messages and its training log says
    # "read as messages", so the file's own format is named as columns that become those messages.
    how = ("**chat messages**" if report.format == "messages" else
           f"**{report.format}** columns, trained as **chat messages**")
    lines = [f"**{Path(report.path).name}** — {how} ({mapping})",
             f"- **{report.n_used}** of {report.n_rows} rows will be used"]
    if report.n_skipped:
        why = ", ".join(f"{n} × {k}" for k, n in report.skipped_reasons.most_common())
        lines.append(f"- **{report.n_skipped}** skipped: {why} (details in the problems table)")
    n_warn = sum(i.severity == "warning" for i in report.issues)
    if n_warn:
        lines.append(f"- {n_warn} warning(s): those rows are used, but check them")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, str):
        s = v
    elif v is None or (isinstance(v, float) and math.isnan(v)):
        s = ""
    else:
        try:
            s = json.dumps(v.tolist() if hasattr(v, "tolist") else v, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            s = str(v)
        except RecursionError:  # nested deeper than the encoder's stack allows
            s = f"({type(v).__name__} nested too deep to show)"
    s = s if len(s) <= CELL_CHARS else s[:CELL_CHARS - 1] + "…"
    return s.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate would break the page's JSON


def preview_frame(table: pd.DataFrame, report: Any = None) -> pd.DataFrame:
    """The first PREVIEW_ROWS rows as read, with a "status" column (used, or skipped and why: the row's first
    error in `report.issues`) and a conversation column shown as User / Assistant (and System) columns."""
    head = table.head(PREVIEW_ROWS)
    convo = _conversation_column(report, head)
    out = pd.DataFrame({c: [_cell(v) for v in head[c].tolist()] for c in head.columns if c != convo})
    if convo is not None:
        turns = [_turns_of(v) for v in head[convo].tolist()]
        at = list(head.columns).index(convo)
        for role in reversed([r for r in ("System", "User", "Assistant")
                              if r != "System" or any(t.get("System") for t in turns)]):
            out.insert(at, role, [_cell(t.get(role, "")) for t in turns])
    rows = table.attrs.get("rows") or list(range(1, len(table) + 1))
    out.insert(0, "row", rows[:len(out)])
    if report is not None and getattr(report, "issues", None) is not None:
        why = {}
        for i in report.issues:
            if i.severity == "error" and i.row is not None:
                why.setdefault(i.row, i.kind)
        out.insert(1, "status", [f"{SKIPPED}: {why[r]}" if r in why else "used" for r in out["row"]])
    return out


def preview_widths(frame: pd.DataFrame) -> list[str]:
    """Column widths that fit the preview in its column (gradio otherwise sizes columns to their text and the last
    ones run off the right edge): narrow row and status, the rest shared evenly."""
    cols = list(frame.columns)
    fixed = {"row": 7, "status": 16}
    rest = [c for c in cols if c not in fixed]
    share = (100 - sum(fixed[c] for c in cols if c in fixed)) / max(len(rest), 1)
    return [f"{fixed[c]}%" if c in fixed else f"{share:.0f}%" for c in cols]


def _conversation_column(report: Any, head: pd.DataFrame) -> str | None:
    """The column a messages/sharegpt report reads its conversations from, when the preview holds it."""
    if not isinstance(report, sdata.DatasetReport) or report.format not in ("messages", "sharegpt"):
        return None
    col = report.mapping.used().get("messages")
    return col if col in head.columns else None


_SPEAKERS = {"system": "System", "user": "User", "human": "User", "assistant": "Assistant", "gpt": "Assistant",
             "model": "Assistant"}


def _turns_of(v: Any) -> dict:
    """{"System"|"User"|"Assistant": text} of one conversation cell (a list of turns, or its JSON text); the turns
    of one speaker joined, numbered when there are several. A cell that is no conversation goes under User as is."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            return {"User": v}
    if hasattr(v, "tolist"):
        v = v.tolist()
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        return {"User": _cell(v)}
    said: dict[str, list[str]] = {}
    for t in v:
        who = _SPEAKERS.get(str(t.get("role", t.get("from", ""))).lower(), "User")
        said.setdefault(who, []).append(_cell(t.get("content", t.get("value", ""))))
    return {who: texts[0] if len(texts) == 1 else "\n".join(f"({k}) {x}" for k, x in enumerate(texts, 1))
            for who, texts in said.items()}


def issues_frame(issues: list[sdata.Issue]) -> pd.DataFrame:
    """The Problems table. A row with an error is left out of training, so it says "skipped" (not "error");
    a warning's row is kept."""
    rows = [{"row": i.row if i.row is not None else "", "column": i.column or "", "problem": i.problem,
             "what to do": i.fix, "severity": SKIPPED if i.severity == "error" else i.severity} for i in issues]
    return pd.DataFrame(rows, columns=ISSUE_COLUMNS)


def cut_issues(lengths: list[int], rows: list[int], max_length: int, n_total: int,
               what: str = "example") -> list[sdata.Issue]:
    """Warnings for the rows longer than the max sequence length (they are kept, and cut to it): row, tokens and the
    cutoff, longest first; the first CUT_LISTED named, the rest counted in one line. `lengths`/`rows` are of the
    token sample, which is all rows unless `n_total` is larger."""
    over = sorted(((n, r) for n, r in zip(lengths, rows) if n > max_length), key=lambda x: (-x[0], x[1]))
    out = [sdata.Issue(r, None, f"{n:,} tokens: cut to the max sequence length of {max_length:,}",
                       f"the first {max_length:,} tokens are trained on; raise Max sequence length (Train tab) or "
                       f"shorten the row to keep all of it", "warning", kind="cut at max length")
           for n, r in over[:CUT_LISTED]]
    rest = len(over) - CUT_LISTED
    sampled = len(lengths) < n_total
    if rest > 0 or (over and sampled):
        of = f" of the {len(lengths):,} {what}s sampled for token counts (of {n_total:,})" if sampled else ""
        out.append(sdata.Issue(None, None, f"{len(over):,} {what}s{of} are longer than {max_length:,} tokens"
                               + (f" ({rest:,} more than listed)" if rest > 0 else ""),
                               "see the token histogram; raise Max sequence length to keep them whole", "warning",
                               kind="cut at max length"))
    return out


def histogram_frame(lengths: list[int], max_length: int) -> tuple[pd.DataFrame, list[str]]:
    """Bars of equal width with an edge exactly at max_length, so each bar is wholly kept or cut."""
    longest = max(lengths or [0])
    # up to 10 bars below the cutoff, at most ~40 in all
    k = max(1, min(16, int(32 * max_length / max(longest, 1))))
    width = max_length / k
    # always a few (maybe empty) bars past the cutoff, so where it lies is visible on the chart
    n_bins = max(k + max(2, k // 6), math.ceil(longest / width) if longest else k)
    counts = [0] * n_bins
    for n in lengths:
        counts[min(int(n // width), n_bins - 1)] += 1
    # no run of empty bars before the shortest example, but always one "fits" bar: gradio fixes the colour
    # legend from the first chart it draws, and a part missing then would later be drawn without colour
    first = min(next((b for b, c in enumerate(counts) if c), 0), k - 1)
    labels, parts = [], []
    for b in range(first, n_bins):
        lo, hi = round(b * width), round((b + 1) * width)
        labels.append(f"{lo}–{hi}")
        parts.append("fits" if hi <= max_length else "cut at max length")
    return pd.DataFrame({"tokens": labels, "examples": counts[first:], "part": parts}), labels


def token_note_md(stats: sdata.TokenStats, n: int) -> str:
    k = len(stats.lengths)
    if k < n:  # a sample: every figure below is of the sample
        note = f"From a random sample of **{k:,}** of the {n:,} examples (the same sample each time). "
        n = k
    else:
        note = ""
    note += (f"Tokens per example: median **{stats.p50}**, 95th percentile **{stats.p95}**, longest **{stats.max}**. "
            f"**{stats.n_over}** of {n} examples (**{stats.pct_over:.1f}%**) are longer than the max sequence "
            f"length of {stats.max_length} and would be truncated. "
            f"{stats.trained_tokens:,} of {stats.total_tokens:,} tokens are answers the model learns from.")
    if stats.n_no_target:
        note += (f" ⚠ {stats.n_no_target} example(s) lose their whole answer to the cut and teach nothing: raise "
                 f"the max sequence length.")
    return note


def preflight_md(stats: sdata.TokenStats, chat_template: str) -> str:
    """A table: under which template, how many of the examples checked have their answers found by the assistant
    mask, and the rows whose answers are not (nothing is learnt from them; at 0% Start refuses the run)."""
    n, found, missed = len(stats.lengths), stats.n_found, stats.missed_rows
    rows = ", ".join(map(str, missed[:20])) + (f" and {len(missed) - 20:,} more" if len(missed) > 20 else "")
    verdict = ("✓ every answer is found" if found == n else
               "⛔ no answer is found: Start refuses this template; pick the one your model and data use" if not found
               else f"⚠ answers not found (not learnt) in rows {rows}")
    return ("| chat template | examples checked | answers found | |\n|---|---|---|---|\n"
            f"| `{chat_template[:80]}` | {n:,} | {found:,} ({stats.pct_found:.0f}%) | {verdict} |")


def render_example(messages: list[dict], tokenizer: Any, max_length: int) -> tuple[list, str]:
    """[(text, label)] runs for gr.HighlightedText: the tokens trained on, the prompt, and what is cut."""
    full = sdata.tokenize_messages(messages, tokenizer, 10**9)
    ids, mask = full["input_ids"], full["assistant_masks"]
    labels = [(TRAINED if m else None) if i < max_length else CUT for i, m in enumerate(mask)]
    spans: list[tuple[str, str | None]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or labels[i] != labels[start]:
            spans.append((tokenizer.decode(ids[start:i], skip_special_tokens=False), labels[start]))
            start = i
    n_trained = sum(m for m in mask[:max_length])
    note = f"{len(ids)} tokens, {n_trained} trained on (highlighted)."
    if len(ids) > max_length:
        note += f" {len(ids) - max_length} tokens past the max length are cut."
    if _template_system(messages, spans):
        note += (" The system prompt at the top is not in your data: the model's chat template adds it when a row "
                 "has none (set System prompt on the left to replace it).")
    return spans, note


def _template_system(messages: list[dict], spans: list) -> bool:
    """Whether the rendered example opens with a system turn that `messages` do not hold: the chat template's own
    default (SmolLM2's adds "You are a helpful AI assistant named SmolLM...")."""
    if any(m.get("role") == "system" for m in messages):
        return False
    first = next((m["content"] for m in messages if m.get("role") == "user"), None)
    text = "".join(t for t, _ in spans)
    at = text.find(first) if first else -1
    return at > 0 and "system" in text[:at].lower()


# --- preference pairs (the DPO stage) -------------------------------------------------------------

def pref_summary_md(report: sdata.PreferenceReport) -> str:
    mapping = ", ".join(f"{k} ← `{v}`" for k, v in report.mapping.items())
    lines = [f"- **{report.n_used}** preference pairs from {report.n_rows} rows will be used"]
    if report.n_skipped:
        why = ", ".join(f"{n} × {k}" for k, n in report.skipped_reasons.most_common())
        lines.append(f"- **{report.n_skipped}** skipped: {why} (details in the problems table)")
    if report.n_not_pairs:
        votes = ", ".join(f"{n} × {k.replace('_', '-')}" for k, n in report.not_pairs.most_common())
        lines.append(f"- **{report.n_not_pairs}** not pairs, counted apart: {votes} (votes that prefer neither "
                     f"answer; not errors, and not trained on)")
    n_warn = sum(i.severity == "warning" for i in report.issues)
    if n_warn:
        lines.append(f"- {n_warn} warning(s): those rows are used, but check them")
    return (f"**{Path(report.path).name}** — **preference pairs** for the **DPO stage**, read as "
            f"{report.shape_label} ({mapping})\n\n{DPO_NOTE}\n\n" + "\n".join(lines))


def pref_token_note_md(stats: sdata.PreferenceTokenStats, n: int) -> str:
    k = stats.n
    note = (f"From a random sample of **{k:,}** of the {n:,} pairs (the same sample each time). " if k < n else "")
    for name, side in (("prompt + chosen", stats.chosen), ("prompt + rejected", stats.rejected)):
        d = stats.side(side)
        note += (f"Tokens of {name}: mean **{d['mean']:.0f}**, median **{d['p50']}**, 95th percentile "
                 f"**{d['p95']}**, longest **{d['max']}**, {d['n_over']} over the max length. ")
    note += (f"**{stats.n_over}** of {k} pairs (**{100.0 * stats.n_over / max(k, 1):.1f}%**) have an answer whose "
             f"prompt + answer is longer than the max sequence length of {stats.max_length} and would be truncated.")
    cut = stats.chosen.n_no_target + stats.rejected.n_no_target
    if cut:
        note += (f" ⚠ {cut} answer(s) are cut away entirely (the prompt fills the max length): raise the max "
                 f"sequence length.")
    return note


def render_pair(example: dict) -> list:
    """[(text, label)] runs for gr.HighlightedText: the prompt's turns, then the chosen and the rejected answer."""
    spans: list[tuple[str, str | None]] = [(f"{t['role']}: {t['content']}\n", None) for t in example["prompt"]]
    for part, label in (("chosen", CHOSEN), ("rejected", REJECTED)):
        spans.append((f"\n{part} answer:\n", None))
        turns = example[part]
        text = "\n".join(t["content"] if len(turns) == 1 else f"{t['role']}: {t['content']}" for t in turns)
        spans.append((text, label))
    return spans
