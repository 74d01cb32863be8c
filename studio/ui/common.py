"""Helpers shared by the tabs: config-documented inputs, run pickers, small formatting.

Nothing here holds state: every function reads what it needs from its arguments or from disk.
"""
from __future__ import annotations

import html
import math
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from studio import runs
from studio.runs.events import ACTIVE_STATES
from studio.runs.results import preferred_choice
from studio.config import field_meta

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
SAMPLES_DIR = ASSETS / "datasets"
CSS_PATH = ASSETS / "style.css"
DEFAULT_SAMPLE = SAMPLES_DIR / "pirate_qa.jsonl"

def is_slider(section: str, name: str) -> bool:
    return field_meta(section, name).get("widget") == "slider"


def field_input(section: str, name: str, value: Any = None, **kw: Any):
    """A gradio input for one config field: label, help, choices, range, step and widget all come from the
    config's own field metadata (studio.config), the one place they are written."""
    meta = field_meta(section, name)
    value = meta["default"] if value is None else value
    common = {"label": meta["label"], "info": meta["help"] or None, **kw}  # kw may override the info
    default = meta["default"]
    if "choices" in meta:
        return gr.Dropdown(choices=list(meta["choices"]), value=value, multiselect=isinstance(default, list),
                           **common)
    if isinstance(default, bool):
        return gr.Checkbox(value=value, **common)
    if isinstance(default, list):
        return gr.Textbox(value=to_widget(value), **common)
    if is_slider(section, name):
        return gr.Slider(minimum=meta["minimum"], maximum=meta["maximum"], step=meta.get("step", 1), value=value,
                         **common)
    if isinstance(default, float):
        return gr.Number(value=value, step=meta.get("step", 0.01), **common)
    if isinstance(default, int):
        # no minimum/maximum on the widget: the config's own range check gives the readable message
        return gr.Number(value=value, precision=0, step=meta.get("step", 1), **common)
    return gr.Textbox(value=value, **common)


def from_widget(section: str, name: str, value: Any) -> Any:
    """A widget's value back in the config's type (gr.Number hands over floats, None when cleared)."""
    default = field_meta(section, name)["default"]
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, list):
        return value if isinstance(value, list) else str(value or "")
    if isinstance(default, (int, float)):
        if value is None or value == "":
            raise ValueError(f"{field_meta(section, name)['label']} is empty: enter a number.")
        if isinstance(default, int) and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    return "" if value is None else value


def to_widget(value: Any, section: str | None = None, name: str | None = None) -> Any:
    """A config value as its widget shows it: lists are comma-separated text, except in a multiselect."""
    if isinstance(value, list) and not (section and "choices" in field_meta(section, name)):
        return ", ".join(value)
    return value


# --- runs ---------------------------------------------------------------------------------------

def run_names(listed: list[dict], state: bool = True) -> dict[str, str]:
    """{run path: the name to show}: the run's name as the run list shows it (studio.runs.run_name), its id added only
    when two runs share the name, and its state when it is not finished ("bio · running"). The id alone was cut to
    "…(20261202-174314-b" in a half-width picker at 1400 px. The Chat, Export and Start from pickers use it."""
    count: dict[str, int] = {}
    for r in listed:
        count[r["name"]] = count.get(r["name"], 0) + 1
    out = {}
    for r in listed:
        name = r["name"] + (f" ({r['id']})" if count[r["name"]] > 1 else "")
        shown = state and r["state"] not in ("finished", "unknown")
        out[r["path"]] = name + (f" · {r['state']}" if shown else "")
    return out


def run_labels(listed: list[dict]) -> list[tuple[str, str]]:
    """(label, run folder) for a run picker: `listed` (list_runs rows) by run_names."""
    names = run_names(listed)
    return [(names[r["path"]], r["path"]) for r in listed]


def pick_run(listed: list[dict], current: str | None = None) -> tuple[list[tuple[str, str]], str | None]:
    """A run picker's choices and value from `listed` (list_runs rows, read once): `current` while it is still
    offered, else the run with the best eval loss among those on the same held-out rows as the newest (its label
    says so: studio.runs.results.preferred_choice), else the newest."""
    choices, preferred = preferred_choice(run_labels(listed), listed)
    return choices, current if current in [p for _, p in choices] else preferred


def files_key(run_dir: str | Path | None, names) -> tuple:
    """The run folder and each named file's (size, mtime) in it (None for a missing one): it changes whenever one of
    the files may have, so a timer tick that finds it unchanged reads nothing and sends nothing."""
    if not run_dir:
        return (None,)
    out: list = [str(run_dir)]
    for name in names:
        try:
            st = (Path(run_dir) / name).stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def is_active(run_dir: str | Path | None) -> bool:
    return bool(run_dir) and runs.status(Path(run_dir)).get("state") in ACTIVE_STATES


# --- formatting ---------------------------------------------------------------------------------

def fmt_duration(s: float | None) -> str:
    if s is None or not isinstance(s, (int, float)) or not math.isfinite(s):
        return "–"
    s = round(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def box(text: str, kind: str = "info") -> str:
    """A small coloured message box (kind: info, ok, warn, error) as HTML; the text is escaped."""
    return f'<div class="studio-box studio-{kind}">{html.escape(text)}</div>'


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary folder for a file the user downloads (gradio copies it into its cache)."""
    return Path(tempfile.mkdtemp(prefix=f"studio-{prefix}-"))
