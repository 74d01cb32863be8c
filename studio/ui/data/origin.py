"""Where the Data tab's file comes from, in the user's words: a bundled sample, an upload, or (after a reload) the
data of the run the Train tab attached to. Plain functions, tested without a browser.

A reload must not swap the training data: the page used to open on the bundled sample while the Train tab showed a
run trained on the user's upload, and Start then trained on the sample. `restore` picks the attached run's data
instead: its run.json `source_data` when that file is still here and reads as the run read it (the same number of
rows used), else the run's own copy (studio.stages' run file, e.g. dataset.jsonl), which always matches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio import data as sdata
from studio import runs, stages
from studio.config import RunConfig

from ..common import SAMPLES_DIR
from .handlers import checked_report, choose, default_path, preference_state, sample_choices, upload_folder


@dataclass
class Restored:
    """What the Data tab opens on: the file, the sample picker's choices, this session's chosen files, a note."""
    path: str
    choices: list
    chosen: list
    note: str = ""
    system_prompt: str | None = None  # the run's data.system_prompt; None: leave the box as it is


def _inside(p: Path, folder: Path) -> bool:
    try:
        return p.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):
        return False


def file_label(path: str | None) -> str:
    """The Dataset file box: the file's own name, never gradio's temp path (<tmp>/gradio/<hash>/qa30.csv); a run's
    copy says whose it is; a file of the user's own (a loaded config's) keeps its full path, which is theirs."""
    if not path:
        return ""
    p = Path(str(path))
    if _inside(p, SAMPLES_DIR):
        return f"{p.name} (bundled sample)"
    if _inside(p, upload_folder()):
        return f"{p.name} (uploaded)"
    if runs.is_run(p.parent):
        return f"{p.name} (the copy kept in run {runs.run_name(p.parent)})"
    return str(p)


def keep_note(path: str | None, note: str | None) -> str:
    """The restore note while the tab still shows the file it names; '' once another file is picked (an upload, a
    sample, a loaded config's data)."""
    return note if note and path and Path(str(path)).name in note else ""


def upload_choices(path: str) -> list:
    """The sample picker's choices with the upload as one more, so the picker names the file instead of going
    blank after an upload."""
    return sample_choices() + [(f"{Path(path).name} (your upload)", str(path))]


def _rows_used(path: str, system_prompt: str) -> int | None:
    """Rows (or pairs) the Data tab uses of `path` read as it reads a new file (format auto, no mapping); None when it
    cannot be read. The report is cached, so the check that follows does not read the file again."""
    try:
        pref = preference_state(path)
        if pref.get("kind") == "preference":
            return pref.get("pairs")
        report = checked_report({"path": path, "format": "auto", "columns": {}, "system_prompt": system_prompt,
                                 "skip_invalid": True})
        return report.n_used if report is not None else None
    except (sdata.DataError, ValueError, OSError):
        return None


def restore(run_dir: str | None, chosen: list | None) -> Restored:
    """The file the Data tab opens on: the data of `run_dir` (the run the Train tab attached to), else the bundled
    sample. The file is added to this session's `chosen` (a run's files lie outside gradio's upload folder)."""
    sample = default_path()
    if not run_dir or not runs.is_run(run_dir):
        return Restored(sample, sample_choices(), list(chosen or []))
    run = Path(run_dir)
    info, name = runs.run_info(run), runs.run_name(run)
    try:
        cfg = RunConfig.load(run / runs.CONFIG)
        own, prompt = run / stages.get(cfg.train.stage).run_file, cfg.data.system_prompt
    except (ValueError, OSError, KeyError):
        return Restored(sample, sample_choices(), list(chosen or []))
    src = str(info.get("source_data") or "")
    used = info.get("rows_used")
    why = ""
    if src and Path(src).is_file():
        got = _rows_used(src, prompt)
        if got is not None and (used is None or got == used):
            return Restored(src, sample_choices() + [(f"{Path(src).name} (data of run {name})", src)],
                            choose(chosen, src), f"Showing the data of run **{name}**: {Path(src).name}"
                            + (f" ({used:,} rows used when it trained)." if used is not None else "."), prompt)
        why = (f"{Path(src).name} cannot be read now" if got is None else
               f"{Path(src).name} now gives {got:,} rows, not the {used:,} the run used (a column mapping or a "
               f"changed file)")
    elif src:
        why = f"{Path(src).name} is no longer on this machine"
    if not own.is_file():
        return Restored(sample, sample_choices(), list(chosen or []),
                        f"Run **{name}**'s data is gone ({why or 'no copy kept'}): showing the bundled sample "
                        f"{Path(sample).name}.")
    note = (f"Showing the data of run **{name}**: the copy it trained on ({own.name}, {used or '?'} rows)"
            + (f", because {why}." if why else "."))
    return Restored(str(own), sample_choices() + [(f"{own.name} (data of run {name})", str(own))],
                    choose(chosen, str(own)), note, prompt)
