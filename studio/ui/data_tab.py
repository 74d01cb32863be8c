"""Data tab: bring a file (upload or bundled sample), check how it was read, fix the column mapping.

Shows the detected format, rows used/skipped and why, a preview, the problems as a table, the token
lengths under the chosen model's chat template with the cutoff marked, and one training example with
the tokens the loss is computed on highlighted. The checked settings go to the Train tab through
`DataTab.state` (a DataSettings as a dict), never through process-global state.

A file of preference pairs (prompt, chosen, rejected: `studio.data.prefs`) is shown as such: pairs found, skipped and
why, ties and both-bad votes counted apart, one pair, and the token lengths of prompt + chosen and prompt + rejected.
It trains the DPO stage on top of an SFT run, which `DataTab.preference` tells the Train tab (`preference_state`):
DataSettings has no field for it, so `DataTab.state` stays a plain DataSettings dict.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from studio import data as sdata
from studio.config import ColumnMapping, DataSettings, field_meta, field_names

from .common import DEFAULT_SAMPLE, SAMPLES_DIR, box, field_input

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
DPO_NOTE = ("This file trains **DPO** (preference tuning: the model learns to prefer the chosen answer over the "
            "rejected one) **on top of an SFT run**: start a DPO run from a finished SFT run's adapter on the Train "
            "tab. It is not SFT data; to teach answers by example, use a file of prompts and answers.")
ISSUE_COLUMNS = ["row", "column", "problem", "what to do", "severity"]
NO_DATA = "No data yet"
# The last checked file's report, kept so Example #, max length and model changes do not read the file again.
# A memo of a pure function keyed by the file's identity (path, mtime, size) and the settings, not per-browser
# state; 1 entry, because a report holds every example (~1 KB of Python objects per row: ~2 GB for 1.9 M rows).
_REPORTS: OrderedDict = OrderedDict()
_STATS: OrderedDict = OrderedDict()  # (report key, model, max length) -> TokenStats of the sample; 4 entries
_KINDS: OrderedDict = OrderedDict()  # (path, mtime, size) -> is_preference_file; 8 entries (a .json is read whole)


def sample_choices() -> list[tuple[str, str]]:
    files = sorted(p for p in SAMPLES_DIR.glob("*") if p.suffix.lower() in sdata.EXTENSIONS)
    return [(f"{p.name} (bundled sample)", str(p)) for p in files]


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


def upload_folder() -> Path:
    """Where gradio keeps uploads ($GRADIO_TEMP_DIR, else <tmp>/gradio), as gradio itself decides it."""
    from gradio.utils import get_upload_folder
    return Path(get_upload_folder()).resolve()


def allowed(path: str, chosen: list | None = None) -> bool:
    """Whether the tab may read `path`: a file in gradio's upload cache, a bundled sample, or one chosen in this
    browser session (`chosen`, kept in a gr.State the browser cannot write). The path box is read-only in the
    page but free text to the API, so without this any .csv/.json/.parquet on the server could be read."""
    try:
        p = Path(path).resolve()
        if p.is_relative_to(SAMPLES_DIR.resolve()) or p.is_relative_to(upload_folder()):
            return True
        return any(p == Path(c).resolve() for c in chosen or [] if c)
    except (OSError, RuntimeError, ValueError, TypeError):
        return False


def choose(chosen: list | None, path: str | None) -> list:
    """`chosen` with `path` added: a file this browser session picked (an upload, or a loaded config's data)."""
    chosen = list(chosen or [])
    return chosen + [str(path)] if path and str(path) not in chosen else chosen


def handle(path: str | None, chosen: list | None, fmt: str = "auto", mapping: dict | None = None,
           system_prompt: str = "", skip_invalid: bool = True, model_source: str | None = "demo",
           max_length: float | None = 512, example_index: float | None = 1,
           progress: Callable[[float, str], None] | None = None) -> DataView:
    """What the tab's events run: `inspect`, for a file this session may read; anything else is not read."""
    if path and not allowed(path, chosen):
        return DataView(False, f"{Path(str(path)).name} was not uploaded in this page: the Data tab reads only "
                               f"files uploaded here, the bundled samples and a loaded config's data file. Upload "
                               f"the file to check it.")
    return inspect(path, fmt, mapping, system_prompt, skip_invalid, model_source, max_length, example_index,
                   progress)


def _report(path: str, fmt: str, cols: ColumnMapping, system_prompt: str, skip_invalid: bool,
            progress: Callable[[float, str], None]) -> tuple[tuple, sdata.DatasetReport, pd.DataFrame]:
    """(cache key, report without its table, preview): read once per file version and settings."""
    key = (*_file_key(path), fmt, tuple(sorted(cols.used().items())), system_prompt, skip_invalid)
    return _cached(key, path, "", lambda: sdata.read_examples(path, fmt, cols, system_prompt, skip_invalid),
                   progress)


def _cached(key: tuple, path: str, what: str, read, progress: Callable[[float, str], None]) -> tuple:
    """(key, report, preview) from the cache, or `read()` once (key[2] is the file's size)."""
    if key in _REPORTS:
        _REPORTS.move_to_end(key)
        return (key, *_REPORTS[key])
    _REPORTS.clear()  # before the read: two big reports must never be held at once
    _STATS.clear()
    progress(0.05, f"Reading {Path(path).name} ({key[2] / 1e6:,.1f} MB){what}…")
    report = read()
    preview = _preview(report.table)
    report.table = None  # the raw cells are only needed for the preview
    _REPORTS[key] = (report, preview)
    return key, report, preview


def inspect(path: str | None, fmt: str = "auto", mapping: dict | None = None, system_prompt: str = "",
            skip_invalid: bool = True, model_source: str | None = "demo", max_length: float | None = 512,
            example_index: float | None = 1, progress: Callable[[float, str], None] | None = None) -> DataView:
    """Read, detect, validate and measure one dataset file. Never raises for bad input: the message says it.
    The report is reused while the file and the data settings are unchanged; token statistics come from a sample
    of at most TOKEN_SAMPLE examples."""
    if not path:
        return DataView(False, f"{NO_DATA}: upload a file or pick a bundled sample.")
    mapping = {k: v for k, v in (mapping or {}).items() if v}
    progress = progress or (lambda frac, text: None)
    if (fmt or "auto") == "auto" and not mapping and _is_preference(str(path)):  # a format picked by hand wins
        return inspect_preferences(str(path), system_prompt, skip_invalid, model_source, max_length, example_index,
                                   progress)
    try:
        cols = ColumnMapping(**mapping)
        key, report, preview = _report(str(path), fmt or "auto", cols, system_prompt or "", bool(skip_invalid),
                                       progress)
    except (sdata.DataError, ValueError) as e:  # UnicodeError is a ValueError too
        return DataView(False, str(e))
    except OSError as e:  # gone or unreadable between the check and the read
        return DataView(False, f"{Path(str(path)).name} cannot be read ({e.strerror or e}). Upload it again.")
    used = report.mapping.used()
    cfg = DataSettings(path=str(path), format=report.format, columns=dict(used),
                       system_prompt=system_prompt or "", skip_invalid=bool(skip_invalid))
    state = {**asdict(cfg), "columns": cfg.columns.used()}  # only the roles in use: short and readable
    view = DataView(True, _summary(report), report.format, used, list(report.columns), preview,
                    _issues(report.issues), n_examples=report.n_used, config=state,
                    preference={"kind": "sft", "stage": "sft", "path": str(path)})
    max_length, tok = _measure_with(view, max_length, model_source)
    if tok is None:
        return view
    stats = _token_stats((key, model_source, max_length), report, tok, max_length, sdata.token_stats, "examples",
                         progress)
    if stats.issues:  # answers the chat template rewrites: listed with the rest
        view.issues = _issues(report.issues + stats.issues)
    view.hist, view.hist_order = _histogram(stats.lengths, max_length)
    view.token_note = _token_note(stats, report.n_used)
    i = min(max(int(example_index or 1), 1), report.n_used) - 1
    view.example, view.example_note = render_example(report.examples[i], tok, max_length)
    view.example_note = f"Example {i + 1} of {report.n_used} (row {report.rows[i]} of the file). " + view.example_note
    return view


def _measure_with(view: DataView, max_length: float | None, model_source: str | None) -> tuple[int, Any]:
    """(max length, tokenizer) for the token statistics, or (.., None) with `view.token_note` saying why not."""
    meta = field_meta("train", "max_length")
    try:
        max_length = int(max_length or 512)
    except (TypeError, ValueError, OverflowError):
        max_length = 512
    if not meta["minimum"] <= max_length <= meta["maximum"]:  # a value typed in the form before it is checked
        view.token_note = (f"Token lengths need a Max sequence length from {meta['minimum']} to {meta['maximum']} "
                           f"(got {max_length}): correct it on the Train tab.")
        return max_length, None
    view.max_length = max_length
    try:
        from studio.models import load_tokenizer, resolve_source
        return max_length, load_tokenizer(resolve_source(model_source or "demo"))
    except Exception as e:  # noqa: BLE001 — a model not downloaded, a typo in the hub id: the data is still fine
        view.token_note = f"Token lengths unavailable: could not load the tokenizer of '{model_source}' ({e})."
        return max_length, None


def _token_stats(skey: tuple, report, tok, max_length: int, count, what: str, progress):
    """Token statistics of a sample of the report's examples (`count`: sdata.token_stats or preference_token_stats),
    kept for the last 4 (file version, model, max length) asked."""
    stats = _STATS.get(skey)
    if stats is None:
        examples, rows = sdata.sample_examples(report.examples, report.rows)
        progress(0.7, f"Counting tokens in {len(examples):,} {what}…")
        stats = _STATS[skey] = count(examples, tok, max_length, rows)
        while len(_STATS) > 4:
            _STATS.popitem(last=False)
    return stats


# --- preference pairs (the DPO stage) -------------------------------------------------------------

def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_mtime_ns, st.st_size


def _is_preference(path: str) -> bool:
    """sdata.is_preference_file, once per file version (Example # and max length changes ask again)."""
    try:
        key = _file_key(path)
    except OSError:
        return False  # the SFT path says what is wrong with it
    if key not in _KINDS:
        _KINDS[key] = sdata.is_preference_file(path)
        while len(_KINDS) > 8:
            _KINDS.popitem(last=False)
    return _KINDS[key]


def _pref_report(path: str, skip_invalid: bool, progress: Callable[[float, str], None]
                 ) -> tuple[tuple, sdata.PreferenceReport, pd.DataFrame]:
    """(cache key, report without its table, preview), read once per file version, as `_report`."""
    key = (*_file_key(path), "preference", skip_invalid)
    return _cached(key, path, " as preference pairs", lambda: sdata.read_preferences(path, skip_invalid), progress)


def _pref_state(path: str, report: sdata.PreferenceReport | None, error: str = "") -> dict:
    state = {"kind": "preference", "stage": "dpo", "path": str(path)}
    if report is not None:
        state.update(shape=report.shape, pairs=report.n_used, skipped=report.n_skipped,
                     not_pairs=report.n_not_pairs)
    if error:
        state["error"] = error
    return state


def preference_state(path: str | None, skip_invalid: bool = True) -> dict:
    """What the Data tab's file trains, for the Train tab. A preference file: {"kind": "preference", "stage": "dpo",
    "path", "shape", "pairs", "skipped", "not_pairs"} ("error" with the DataError's message, instead of the counts,
    when it cannot be used); any other file: {"kind": "sft", "stage": "sft", "path"}; no path: {}. The tab keeps it
    in `DataTab.preference`, next to `DataTab.state`: that one becomes a DataSettings, which has no field for it.
    Reads the file only when the tab has not (one cached report)."""
    if not path:
        return {}
    if not _is_preference(str(path)):
        return {"kind": "sft", "stage": "sft", "path": str(path)}
    try:
        _, report, _ = _pref_report(str(path), bool(skip_invalid), lambda frac, text: None)
    except (sdata.DataError, ValueError) as e:
        return _pref_state(path, None, str(e))
    except OSError as e:
        return _pref_state(path, None, f"{Path(str(path)).name} cannot be read ({e.strerror or e}).")
    return _pref_state(path, report)


def inspect_preferences(path: str, system_prompt: str = "", skip_invalid: bool = True,
                        model_source: str | None = "demo", max_length: float | None = 512,
                        example_index: float | None = 1, progress: Callable[[float, str], None] | None = None
                        ) -> DataView:
    """`inspect` for a file of preference pairs: the pairs found, skipped (and why) and counted apart, a preview,
    one pair, and the token lengths of prompt + chosen and prompt + rejected. Never raises for bad input."""
    progress = progress or (lambda frac, text: None)
    try:
        key, report, preview = _pref_report(path, bool(skip_invalid), progress)
    except (sdata.DataError, ValueError) as e:
        return DataView(False, str(e), preference=_pref_state(path, None, str(e)))
    except OSError as e:
        return DataView(False, f"{Path(path).name} cannot be read ({e.strerror or e}). Upload it again.")
    # the Train tab builds a DataSettings from `config`: the path and the switches only, no marker (see module doc)
    cfg = DataSettings(path=path, system_prompt=system_prompt or "", skip_invalid=bool(skip_invalid))
    view = DataView(True, _pref_summary(report), "auto", {}, list(report.columns), preview, _issues(report.issues),
                    n_examples=report.n_used, config={**asdict(cfg), "columns": {}},
                    preference=_pref_state(path, report))
    i = min(max(int(example_index or 1), 1), report.n_used) - 1
    view.example = render_pair(report.examples[i])
    view.example_note = (f"Pair {i + 1} of {report.n_used} (row {report.rows[i]} of the file): the prompt, then the "
                         f"two answers DPO compares.")
    max_length, tok = _measure_with(view, max_length, model_source)
    if tok is None:
        return view
    stats = _token_stats((key, model_source, max_length), report, tok, max_length, sdata.preference_token_stats,
                         "pairs", progress)
    if stats.issues:
        view.issues = _issues(report.issues + stats.issues)
    view.hist, view.hist_order = _histogram(stats.pair_lengths, max_length)
    view.hist_label = (f"Tokens per pair (prompt + the longer answer) — max sequence length {max_length}: red bars "
                       f"would be cut")
    view.token_note = _pref_token_note(stats, report.n_used)
    return view


def _pref_summary(report: sdata.PreferenceReport) -> str:
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


def _pref_token_note(stats: sdata.PreferenceTokenStats, n: int) -> str:
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


def _summary(report: sdata.DatasetReport) -> str:
    mapping = ", ".join(f"{k} ← `{v}`" for k, v in report.mapping.used().items())
    lines = [f"**{Path(report.path).name}** — read as **{report.format}** ({mapping})",
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


def _preview(table: pd.DataFrame) -> pd.DataFrame:
    head = table.head(PREVIEW_ROWS)
    out = pd.DataFrame({c: [_cell(v) for v in head[c].tolist()] for c in head.columns})
    rows = table.attrs.get("rows") or list(range(1, len(table) + 1))
    out.insert(0, "row", rows[:len(out)])
    return out


def _issues(issues: list[sdata.Issue]) -> pd.DataFrame:
    rows = [{"row": i.row if i.row is not None else "", "column": i.column or "", "problem": i.problem,
             "what to do": i.fix, "severity": i.severity} for i in issues]
    return pd.DataFrame(rows, columns=ISSUE_COLUMNS)


def _histogram(lengths: list[int], max_length: int) -> tuple[pd.DataFrame, list[str]]:
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


def _token_note(stats: sdata.TokenStats, n: int) -> str:
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
    return spans, note


# --- the tab ------------------------------------------------------------------------------------

@dataclass
class DataTab:
    sample: gr.Dropdown
    upload: gr.File
    path: gr.Textbox
    format: gr.Dropdown
    columns: dict  # role -> gr.Dropdown
    system_prompt: gr.Textbox
    skip_invalid: gr.Checkbox
    summary: gr.Markdown
    error: gr.HTML
    preview: gr.Dataframe
    issues: gr.Dataframe
    hist: gr.State
    token_note: gr.Markdown
    example_index: gr.Number
    example: gr.HighlightedText
    example_note: gr.Markdown
    state: gr.State  # DataSettings as a dict, or None while the data cannot be used
    chosen: gr.State  # paths this browser session picked outside the upload cache (see `allowed`, `choose`)
    preference: gr.State  # preference_state of the file: {"kind": "sft"|"preference", "stage": "sft"|"dpo", ...}


def build() -> DataTab:
    gr.Markdown("Bring examples of the answers you want. One row per example; the model learns the answer "
                "(assistant) parts. CSV, JSON, JSON Lines and Parquet files work. Preference pairs (prompt, chosen, "
                "rejected, or the Chat tab's votes) are recognised too: they train the DPO stage on top of an SFT "
                "run.", elem_classes="studio-lead")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            upload = gr.File(label="Upload your data", file_types=list(sdata.EXTENSIONS), type="filepath",
                             elem_id="data-upload", height=120)
            sample = gr.Dropdown(choices=sample_choices(), value=None, label="…or pick a bundled sample",
                                 info="Pirate Q&A: 260 short answers in a very recognisable style.",
                                 elem_id="data-sample")
            path = gr.Textbox(label=field_meta("data", "path")["label"], interactive=False, elem_id="data-path",
                              info="The file being checked. It is only read, never changed.")
            with gr.Accordion("Format and column mapping", open=True):
                fmt = field_input("data", "format", elem_id="data-format")
                cols = {}
                for role in ROLES:  # choices are the file's columns, filled in when a file is read
                    meta = field_meta("columns", role)
                    cols[role] = gr.Dropdown(choices=[""], value="", label=meta["label"], info=meta["help"],
                                             visible=False, elem_id=f"data-col-{role}")
            system_prompt = field_input("data", "system_prompt", lines=2)
            skip_invalid = field_input("data", "skip_invalid")
        with gr.Column(scale=2, min_width=420):
            error = gr.HTML(visible=False, elem_id="data-error")
            summary = gr.Markdown("Loading the sample…", elem_id="data-summary")
            with gr.Tabs():
                with gr.Tab("Preview"):
                    preview = gr.Dataframe(label=f"First {PREVIEW_ROWS} rows as read", interactive=False,
                                           wrap=True, max_height=360, elem_id="data-preview")
                with gr.Tab("Problems"):
                    issues = gr.Dataframe(value=pd.DataFrame(columns=ISSUE_COLUMNS), label="Problems found",
                                          interactive=False, wrap=True, max_height=360, elem_id="data-issues")
            hist = gr.State(None)  # {"rows", "order", "label"}: the chart below is drawn from it

            # Re-drawn for each file: gradio's chart keeps its first data when an update also changes the
            # bar order or the label, so the histogram is made anew instead of updated.
            @gr.render(inputs=hist, triggers=[hist.change])
            def _histogram_chart(h):
                if not h:
                    return
                # no fixed height: with a label, gradio's chart then clips its axis title and legend
                gr.BarPlot(pd.DataFrame(h["rows"]), x="tokens", y="examples", color="part", label=h["label"],
                           color_map={"fits": "#4f7cff", "cut at max length": "#e5484d"}, sort=h["order"],
                           x_title=h.get("x_title") or "tokens per example (chat template applied)", y_title="examples",
                           color_title="", elem_id="data-hist", x_label_angle=-45)
            token_note = gr.Markdown(elem_id="data-token-note")
            with gr.Row():
                example_index = gr.Number(value=1, precision=0, label="Example #", minimum=1, scale=0,
                                          min_width=120)
                example_note = gr.Markdown()
            example = gr.HighlightedText(label="One training example as the model sees it",
                                         color_map={TRAINED: "#22c55e", CUT: "#9ca3af", CHOSEN: "#22c55e",
                                                    REJECTED: "#e5484d"}, show_legend=True,
                                         combine_adjacent=False, elem_id="data-example")
    state = gr.State(None)
    chosen = gr.State([])
    preference = gr.State(None)
    return DataTab(sample, upload, path, fmt, cols, system_prompt, skip_invalid, summary, error, preview, issues,
                   hist, token_note, example_index, example, example_note, state, chosen, preference)


def _outputs(t: DataTab) -> list:
    return [t.summary, t.error, t.format, *t.columns.values(), t.preview, t.issues, t.hist, t.token_note,
            t.example, t.example_note, t.example_index, t.state, t.preference]


def _updates(view: DataView) -> list:
    roles = FORMAT_ROLES.get(view.format, ())
    col_updates = [gr.Dropdown(choices=[""] + view.columns, value=view.mapping.get(r, ""),
                               visible=view.ok and r in roles) for r in ROLES]
    return [view.message if view.ok else "",
            gr.HTML(box(view.message, "info" if view.message.startswith(NO_DATA) else "error"), visible=True)
            if not view.ok else gr.HTML(visible=False),
            gr.Dropdown(value=view.format) if view.ok else gr.skip(),
            *col_updates,
            view.preview, view.issues,
            {"rows": view.hist.to_dict("records"), "order": view.hist_order,
             "label": view.hist_label
             or f"Tokens per example — max sequence length {view.max_length}: red bars would be cut",
             "x_title": "tokens per pair (prompt + the longer answer, chat template applied)"
             if view.hist_label else ""}
            if len(view.hist) else None,
            view.token_note, view.example, view.example_note,
            gr.Number(maximum=max(view.n_examples, 1)),
            view.config, view.preference]


def wire(t: DataTab, model, max_length) -> None:
    """Events; `model` and `max_length` are the Train tab's inputs (token counts depend on them)."""
    outs = _outputs(t)
    roles = list(t.columns.values())

    def bar(progress):  # gradio draws it once a step is reported; a cached report reports none
        return lambda frac, text: progress(frac, desc=text)

    # the session's `chosen` comes first: a gr.State input is filled on the server, never from the request
    def detect(chosen, path, system_prompt, skip_invalid, model_source, max_len, idx,
               progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        return _updates(handle(path, chosen, "auto", {}, system_prompt, skip_invalid, model_source, max_len, idx,
                               bar(progress)))

    def with_format(chosen, path, fmt, system_prompt, skip_invalid, model_source, max_len, idx,
                    progress=gr.Progress()):  # noqa: B008
        return _updates(handle(path, chosen, fmt, {}, system_prompt, skip_invalid, model_source, max_len, idx,
                               bar(progress)))

    # the 8 role columns are named, not *cols: gradio only fills a Progress given as a positional parameter
    assert len(ROLES) == 8, ROLES

    def with_mapping(chosen, path, fmt, system_prompt, skip_invalid, model_source, max_len, idx,
                     c1, c2, c3, c4, c5, c6, c7, c8, progress=gr.Progress()):  # noqa: B008
        cols = (c1, c2, c3, c4, c5, c6, c7, c8)
        mapping = {r: c for r, c in zip(ROLES, cols) if c and r in FORMAT_ROLES.get(fmt, ROLES)}
        return _updates(handle(path, chosen, fmt, mapping, system_prompt, skip_invalid, model_source, max_len, idx,
                               bar(progress)))

    base = [t.chosen, t.path, t.system_prompt, t.skip_invalid, model, max_length, t.example_index]
    t.upload.upload(lambda f, c: (f, None, choose(c, f)) if f else (gr.skip(),) * 3, [t.upload, t.chosen],
                    [t.path, t.sample, t.chosen])
    t.sample.input(lambda p: p or gr.skip(), t.sample, t.path)
    t.path.change(detect, base, outs, trigger_mode="always_last")
    t.format.input(with_format, [t.chosen, t.path, t.format, *base[2:]], outs, trigger_mode="always_last")
    keep = [t.chosen, t.path, t.format, *base[2:], *roles]
    gr.on([dd.input for dd in roles], with_mapping, keep, outs, trigger_mode="always_last")
    gr.on([t.system_prompt.blur, t.skip_invalid.input, model.change, max_length.change, t.example_index.change],
          with_mapping, keep, outs, trigger_mode="always_last")


def default_path() -> str:
    return str(DEFAULT_SAMPLE) if DEFAULT_SAMPLE.is_file() else ""
