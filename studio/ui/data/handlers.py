"""The Data tab's handlers: which files the tab may read, and reading, checking and measuring one (instruction
examples, or preference pairs for the stage that trains on them). Plain functions, tested without a browser.

The checked settings go to the Train tab through `DataTab.state` (a DataSettings as a dict), never through
process-global state. A file of preference pairs also tells the Train tab which stage it trains
(`preference_state`, kept in `DataTab.preference`): DataSettings has no field for it.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from studio import data as sdata
from studio import stages
from studio.config import ColumnMapping, DataSettings, ModelSettings, field_meta

from ..common import DEFAULT_SAMPLE, SAMPLES_DIR
from .view import (NO_DATA, PAIR_COLOURS, DataView, cut_issues, histogram_frame, issues_frame, pref_summary_md,
                   pref_token_note_md, preflight_md, preview_frame, render_example, render_pair, summary_md,
                   token_note_md)

# The last checked file's report, kept so Example #, max length and model changes do not read the file again.
# A memo of a pure function keyed by the file's identity (path, mtime, size) and the settings, not per-browser
# state; 1 entry, because a report holds every example (~1 KB of Python objects per row: ~2 GB for 1.9 M rows).
_REPORTS: OrderedDict = OrderedDict()
_STATS: OrderedDict = OrderedDict()  # (report key, model, max length) -> TokenStats of the sample; 4 entries
_KINDS: OrderedDict = OrderedDict()  # (path, mtime, size) -> is_preference_file; 8 entries (a .json is read whole)


def sample_choices() -> list[tuple[str, str]]:
    files = sorted(p for p in SAMPLES_DIR.glob("*") if p.suffix.lower() in sdata.EXTENSIONS)
    return [(f"{p.name} (bundled sample)", str(p)) for p in files]


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


def replace_upload(chosen: list | None, path: str) -> list:
    """`chosen` with the upload `path` added and this session's earlier uploads removed, from the list and from
    disk: gradio keeps each upload in <upload folder>/<content hash>/ until the server stops, so a session that
    uploads ten 400 MB files would otherwise hold 4 GB of temp files. Only paths this session uploaded (`chosen`,
    a gr.State) inside gradio's upload folder are removed: never a sample or a user's own file."""
    folder, new = upload_folder(), Path(path).resolve()
    kept = []
    for c in chosen or []:
        p = Path(c).resolve() if c else None
        if p is None or p == new or not p.is_relative_to(folder) or p.parent == folder:
            kept.append(c)
            continue
        p.unlink(missing_ok=True)
        try:
            p.parent.rmdir()  # the content-hash folder gradio made for it, when nothing else is in it
        except OSError:
            pass
    return choose([c for c in kept if not c or Path(c).resolve() != new], path)


def handle(path: str | None, chosen: list | None, fmt: str = "auto", mapping: dict | None = None,
           system_prompt: str = "", skip_invalid: bool = True, model_source: str | None = "demo",
           max_length: float | None = 512, example_index: float | None = 1,
           progress: Callable[[float, str], None] | None = None, chat_template: str | None = "auto") -> DataView:
    """What the tab's events run: `inspect`, for a file this session may read; anything else is not read.
    `chat_template`: the form's model.chat_template, which the examples are rendered and measured under."""
    if path and not allowed(path, chosen):
        return DataView(False, f"{Path(str(path)).name} was not uploaded in this page: the Data tab reads only "
                               f"files uploaded here, the bundled samples and a loaded config's data file. Upload "
                               f"the file to check it.")
    return inspect(path, fmt, mapping, system_prompt, skip_invalid, model_source, max_length, example_index,
                   progress, chat_template)


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
    preview = preview_frame(report.table, report)
    report.table = _other_cells(report)  # the raw cells were for the preview; checks' compare_to reads the rest
    _REPORTS[key] = (report, preview)
    return key, report, preview


def _other_cells(report) -> pd.DataFrame | None:
    """The columns of an instruction file's table that its format does not read (what a check's compare_to may
    name), with the source row numbers; None when there are none."""
    table = getattr(report, "table", None)
    if table is None or not isinstance(report, sdata.DatasetReport):
        return None
    used = set(report.mapping.used().values())
    extra = [c for c in table.columns if c not in used]
    if not extra:
        return None
    kept = table[extra].copy()
    kept.attrs = {"rows": table.attrs.get("rows")}
    return kept


def checked_report(state: dict | None) -> sdata.DatasetReport | None:
    """The instruction examples of the Data tab's checked file (`state`: DataTab.state), for the Checks panel: the
    tab's cached report when it is of these settings, else read now (and cached). None for no usable data or a
    file of preference pairs. Raises DataError / OSError as read_examples does."""
    found = _checked(state)
    return found[1] if found else None


def _checked(state: dict | None) -> tuple[tuple, sdata.DatasetReport] | None:
    """(cache key, report) for checked_report; the key also keys the token statistics of that report."""
    if not state or not state.get("path") or _is_preference(str(state["path"])):
        return None
    path, cols = str(state["path"]), dict(state.get("columns") or {})
    prompt, skip = state.get("system_prompt") or "", bool(state.get("skip_invalid", True))
    try:
        where = _file_key(path)
    except OSError:
        return None
    for key, (report, _) in _REPORTS.items():
        if (key[:3] == where and key[5:7] == (prompt, skip) and isinstance(report, sdata.DatasetReport)
                and report.format == state.get("format") and dict(report.mapping.used()) == cols):
            return key, report
    key, report, _ = _report(path, state.get("format") or "auto", ColumnMapping(**cols), prompt, skip,
                             lambda frac, text: None)
    return key, report


def inspect(path: str | None, fmt: str = "auto", mapping: dict | None = None, system_prompt: str = "",
            skip_invalid: bool = True, model_source: str | None = "demo", max_length: float | None = 512,
            example_index: float | None = 1, progress: Callable[[float, str], None] | None = None,
            chat_template: str | None = "auto") -> DataView:
    """Read, detect, validate and measure one dataset file. Never raises for bad input: the message says it.
    The report is reused while the file and the data settings are unchanged; token statistics come from a sample
    of at most TOKEN_SAMPLE examples."""
    if not path:
        return DataView(False, f"{NO_DATA}: upload a file or pick a bundled sample.")
    mapping = {k: v for k, v in (mapping or {}).items() if v}
    chat_template = (chat_template or "auto").strip() if isinstance(chat_template, str) else "auto"
    progress = progress or (lambda frac, text: None)
    if (fmt or "auto") == "auto" and not mapping and _is_preference(str(path)):  # a format picked by hand wins
        return inspect_preferences(str(path), system_prompt, skip_invalid, model_source, max_length, example_index,
                                   progress, chat_template)
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
    view = DataView(True, summary_md(report), report.format, used, list(report.columns), preview,
                    issues_frame(report.issues), n_examples=report.n_used, config=state,
                    preference=_sft_state(path))
    max_length, tok = _measure_with(view, max_length, model_source, chat_template)
    if tok is None:
        return view
    stats = _token_stats((key, model_source, max_length, chat_template), report, tok, max_length, sdata.token_stats,
                         "examples", progress)
    # answers the chat template rewrites and rows cut at the max length: listed with the rest, as warnings
    cut = cut_issues(stats.lengths, _sample_rows(report), max_length, report.n_used)
    if stats.issues or cut:
        view.issues = issues_frame(report.issues + stats.issues + cut)
    view.preflight = preflight_md(stats, chat_template)
    view.hist, view.hist_order = histogram_frame(stats.lengths, max_length)
    view.token_note = token_note_md(stats, report.n_used)
    i = min(max(int(example_index or 1), 1), report.n_used) - 1
    view.example, view.example_note = render_example(report.examples[i], tok, max_length)
    view.example_note = f"Example {i + 1} of {report.n_used} (row {report.rows[i]} of the file). " + view.example_note
    return view


def _measure_with(view: DataView, max_length: float | None, model_source: str | None,
                  chat_template: str | None = "auto") -> tuple[int, Any]:
    """(max length, tokenizer with the chosen chat template) for the token statistics, or (.., None) with
    `view.token_note` saying why not."""
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
    try:  # the form's value, checked as the config checks it: a typed path that is not a .jinja file is named
        chat_template = ModelSettings(chat_template=chat_template or "auto").chat_template
    except ValueError as e:
        view.token_note = f"Token lengths unavailable: {e}"
        return max_length, None
    try:
        from studio.models import load_tokenizer, resolve_source
        return max_length, load_tokenizer(resolve_source(model_source or "demo"), chat_template=chat_template)
    except Exception as e:  # noqa: BLE001 — a model not downloaded, a typo in the hub id: the data is still fine
        view.token_note = f"Token lengths unavailable: could not load the tokenizer of '{model_source}' ({e})."
        return max_length, None


def template_refusal(cfg) -> str | None:
    """Start's preflight: a sentence when, under the run's chat template, the assistant mask finds the answer of none
    of the sampled rows (every label would be masked and the run would learn nothing: Unsloth #11321), else None.
    Only runs that train on conversations; the Data tab's sample and cache are reused."""
    if cfg.train.stage != stages.for_data(sdata.CONVERSATIONS).name or not cfg.data.path:
        return None
    d = cfg.data
    state = {"path": d.path, "format": d.format, "columns": d.columns.used(), "system_prompt": d.system_prompt,
             "skip_invalid": d.skip_invalid}
    try:
        found = _checked(state)
        from studio.models import load_tokenizer, resolve_source
        tok = load_tokenizer(resolve_source(cfg.model.source), cfg.model.trust_remote_code, cfg.model.chat_template)
    except Exception:  # noqa: BLE001 — data or model the run itself will name; this check only adds to them
        return None
    if found is None or not found[1].n_used:
        return None
    key, report = found
    stats = _token_stats((key, cfg.model.source, cfg.train.max_length, cfg.model.chat_template), report, tok,
                         cfg.train.max_length, sdata.token_stats, "examples", lambda frac, text: None)
    if stats.n_found or not stats.lengths:
        return None
    return (f"Under the chat template '{cfg.model.chat_template[:80]}' (model.chat_template) the assistant mask finds "
            f"the answer in none of the {len(stats.lengths):,} examples checked, so every label would be masked and "
            f"the run would learn nothing: choose the template your model and data use (auto keeps the model's "
            f"own) and check the Data tab's preflight before starting.")


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


def _sample_rows(report) -> list[int]:
    """The row numbers of the token sample `_token_stats` measured (the same sample each time)."""
    return sdata.sample_examples(report.examples, report.rows)[1]


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


def _sft_state(path: str) -> dict:
    """preference_state of a file of instruction examples: it trains the stage that reads conversations (sft)."""
    return {"kind": "sft", "stage": stages.for_data(sdata.CONVERSATIONS).name, "path": str(path)}


def _pref_state(path: str, report: sdata.PreferenceReport | None, error: str = "") -> dict:
    # the stage comes from the registry: the one that trains on pairs
    state = {"kind": "preference", "stage": stages.for_data(sdata.PAIRS).name, "path": str(path)}
    if report is not None:
        state.update(shape=report.shape, pairs=report.n_used, skipped=report.n_skipped,
                     not_pairs=report.n_not_pairs)
    if error:
        state["error"] = error
    return state


def preference_state(path: str | None, skip_invalid: bool = True) -> dict:
    """What the Data tab's file trains, for the Train tab. A preference file: {"kind": "preference", "stage",
    "path", "shape", "pairs", "skipped", "not_pairs"} ("error" with the DataError's message, instead of the counts,
    when it cannot be used); any other file: {"kind": "sft", "stage", "path"}; no path: {}. "stage" is the one
    studio.stages names for the file's rows (pairs: dpo; conversations: sft). The tab keeps it in
    `DataTab.preference`, next to `DataTab.state`: that one becomes a DataSettings, which has no field for it.
    Reads the file only when the tab has not (one cached report)."""
    if not path:
        return {}
    if not _is_preference(str(path)):
        return _sft_state(path)
    try:
        _, report, _ = _pref_report(str(path), bool(skip_invalid), lambda frac, text: None)
    except (sdata.DataError, ValueError) as e:
        return _pref_state(path, None, str(e))
    except OSError as e:
        return _pref_state(path, None, f"{Path(str(path)).name} cannot be read ({e.strerror or e}).")
    return _pref_state(path, report)


def inspect_preferences(path: str, system_prompt: str = "", skip_invalid: bool = True,
                        model_source: str | None = "demo", max_length: float | None = 512,
                        example_index: float | None = 1, progress: Callable[[float, str], None] | None = None,
                        chat_template: str | None = "auto") -> DataView:
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
    view = DataView(True, pref_summary_md(report), "auto", {}, list(report.columns), preview,
                    issues_frame(report.issues), n_examples=report.n_used, config={**asdict(cfg), "columns": {}},
                    preference=_pref_state(path, report))
    i = min(max(int(example_index or 1), 1), report.n_used) - 1
    view.example, view.colours = render_pair(report.examples[i]), dict(PAIR_COLOURS)
    view.example_note = (f"Pair {i + 1} of {report.n_used} (row {report.rows[i]} of the file): the prompt, then the "
                         f"two answers DPO compares.")
    max_length, tok = _measure_with(view, max_length, model_source, chat_template)
    if tok is None:
        return view
    stats = _token_stats((key, model_source, max_length, chat_template), report, tok, max_length,
                         sdata.preference_token_stats, "pairs", progress)
    cut = cut_issues(stats.pair_lengths, _sample_rows(report), max_length, report.n_used, "pair")
    if stats.issues or cut:
        view.issues = issues_frame(report.issues + stats.issues + cut)
    view.hist, view.hist_order = histogram_frame(stats.pair_lengths, max_length)
    view.hist_label = (f"Tokens per pair (prompt + the longer answer) — max sequence length {max_length}: red bars "
                       f"would be cut")
    view.token_note = pref_token_note_md(stats, report.n_used)
    return view


def default_path() -> str:
    return str(DEFAULT_SAMPLE) if DEFAULT_SAMPLE.is_file() else ""
