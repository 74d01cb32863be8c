"""The Train tab's model picker: the models on this machine and the popular ones (studio.models.catalog), the fit
table for the form's settings (studio.models.fit: studio.memory.estimate's figures, on this GPU or common cards), and
a hub download with its progress (bytes, rate, ETA from huggingface_hub's own progress bars)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.config import DEMO_MODEL
from studio.models import catalog, fit
from studio.models.progress import DownloadWatch
from studio.models.source import ModelError

from .. import settings as settings_mod
from ..common import box

MODEL_COLUMNS = ["model", "where", "parameters", "architecture", "context", "on disk", "chat template", "note",
                 "source"]
TICK_S = 0.5  # how often the download's progress is redrawn


@dataclass
class Picker:
    models: gr.Dataframe
    refresh: gr.Button
    fit_table: gr.Dataframe
    fit_note: gr.Markdown
    size: gr.Button
    download: gr.Button
    progress: gr.HTML


# --- plain handlers -------------------------------------------------------------------------------

def models_frame(extra: tuple | list = (), models: list | None = None) -> pd.DataFrame:
    """The picker's table: the models here, then the popular ones (their source in the last column); `models`:
    catalog.catalog()'s list when the caller has it already."""
    rows = [{**m.row(), "source": m.source} for m in (models if models is not None else catalog.catalog(extra))]
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def fit_frame(values: list | tuple, data: dict | None = None, checks: list | None = None,
              card_sizes: list[float] | None = None) -> tuple[pd.DataFrame, str]:
    """(the fit table, a line saying what it is) for the form's settings: one row per popular model (and the chosen
    one), a column per card: the verdict and the longest Max sequence length that fits."""
    try:
        cfg = settings_mod.values_to_config(values, data, checks=checks)
    except ValueError as e:
        return pd.DataFrame(columns=["model"]), f"⚠ {e}"
    models = catalog.popular()
    if cfg.model.source not in {m.source for m in models}:
        models = [m for m in catalog.catalog() if m.source == cfg.model.source] + models
    sizes = card_sizes or fit.cards()
    table = fit.fit_table(cfg, models, sizes)
    rows: dict[str, dict] = {}
    for f in table:
        r = rows.setdefault(f.model, {"model": f.model, "no ckpt GB": round(f.peak_off_gb, 1),
                                      "ckpt GB": round(f.peak_on_gb, 1)})
        r[f"{f.card_gb:g} GB card"] = f"{f.verdict}" + (f", up to {f.max_length}" if f.max_length else "")
    t = cfg.train
    here = "this machine's GPU" if card_sizes is None and len(sizes) == 1 else "common cards (no GPU here)" \
        if card_sizes is None else "the cards asked for"
    note = (f"Peak GPU memory from the memory estimate for these settings ({cfg.model.quantization}, LoRA r "
            f"{cfg.lora.r}, batch {t.batch_size}, rows of {t.max_length} tokens) on {here}; 'up to N' is the longest "
            f"Max sequence length that fits with gradient checkpointing on. Peaks in GB of 1e9 bytes; an N GB card "
            f"holds N GiB (24 GB: 25.8e9 bytes).")
    return pd.DataFrame(list(rows.values())), note


def download_problem(source: str) -> str | None:
    """Why `source` is not something to download from the hub; None when it is a hub id not in the cache yet."""
    source = (source or "").strip()
    if source == DEMO_MODEL:
        return "The demo model is fetched from PyPI when it is first used: nothing to download here."
    if Path(source).expanduser().exists():
        return f"{source[:120]} is a folder on this machine: nothing to download."
    if source.count("/") != 1:
        return f"'{source[:120]}' is not a hub id like org/name: pick a model above or type one."
    return None


def download_updates(source: str, run=catalog.download, tick: float = TICK_S):
    """Generator of progress boxes while `source` downloads in a worker thread (`run(source, tqdm_class)`): the
    bytes, rate and ETA each `tick` s, then where it went or the refusal's sentence (a gated model: accept the
    licence and log in)."""
    problem = download_problem(source)
    if problem:
        yield box(problem, "info")
        return
    watch, result = DownloadWatch(), {}

    def work():
        try:
            result["path"] = run(source.strip(), watch.tqdm_class())
        except ModelError as e:
            result["error"] = str(e)
        except Exception as e:  # noqa: BLE001 — a download failure is a message on the page, never a traceback
            result["error"] = f"Could not download '{source[:120]}': {str(e).splitlines()[0][:300] if str(e) else e}"
        finally:
            watch.finished = True

    worker = threading.Thread(target=work, daemon=True, name="studio-download")
    worker.start()
    while worker.is_alive():
        yield box(f"{source}: {watch.state().line()}", "info")
        time.sleep(tick)
    worker.join()
    if "error" in result:
        yield box(result["error"], "error")
    else:
        yield box(f"{source}: {watch.state().line()}. It is in the Hugging Face cache ({result['path']}) and listed "
                  f"above.", "ok")


# --- layout and events ----------------------------------------------------------------------------

def build() -> Picker:
    with gr.Accordion("Which model, and will it fit?", open=False, elem_id="model-picker"):
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100)
            gr.Markdown("The models on this machine, then popular ones (their shapes ship with the studio, so the "
                        "estimate works before a download). Click a row to train it.")
        models = gr.Dataframe(pd.DataFrame(columns=MODEL_COLUMNS), interactive=False, wrap=True, max_height=320,
                              elem_id="model-picker-table")
        with gr.Row():
            download = gr.Button("Download the chosen hub model", size="sm", elem_id="model-download")
            size = gr.Button("Size the models for these settings", size="sm", elem_id="model-fit-refresh")
        progress = gr.HTML("", elem_id="model-download-progress")
        fit_note = gr.Markdown("", elem_id="model-fit-note")
        fit_table = gr.Dataframe(pd.DataFrame(columns=["model"]), interactive=False, wrap=True, max_height=420,
                                 elem_id="model-fit-table")
    return Picker(models, refresh, fit_table, fit_note, size, download, progress)


def wire(p: Picker, s: settings_mod.Settings, data_state: gr.State, demo: gr.Blocks,
         checks: gr.State | None = None) -> None:
    """The picker's events: its table on load and Refresh, a row click sets the form's model, the fit table on
    request, the download with its progress (then the form's model choices again)."""
    extra = [checks] if checks is not None else []

    def listing(current):
        folder = [current] if current and Path(str(current)).expanduser().is_dir() else []
        models = catalog.catalog(folder)  # once: it scans the HF cache and sizes every model folder
        return models_frame(models=models), gr.Dropdown(choices=settings_mod.model_choices(models=models))

    demo.load(listing, s.model, [p.models, s.model])
    p.refresh.click(listing, s.model, [p.models, s.model])

    def on_select(df, evt: gr.SelectData):
        try:
            return df.iloc[evt.index[0]]["source"]
        except (IndexError, KeyError, TypeError):
            return gr.skip()

    p.models.select(on_select, p.models, s.model)

    def on_size(data, *args):
        chosen, values = (args[0], args[1:]) if extra else (None, args)
        table, note = fit_frame(values, data, chosen)
        return table, note

    p.size.click(on_size, [data_state, *extra, *s.inputs], [p.fit_table, p.fit_note])
    def on_download(source):
        yield from download_updates(source)

    p.download.click(on_download, s.model, p.progress, show_progress="hidden").then(
        listing, s.model, [p.models, s.model])
