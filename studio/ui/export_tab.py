"""Export tab: take the result away — the adapter as a zip with a model card, optionally the merged model, and
GGUF files + Ollama Modelfiles checked by running them in llama-server."""
from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio import export, runs
from studio.export import llamacpp

from .common import box, run_label, scratch_dir

# --- plain handlers -------------------------------------------------------------------------------

def run_choices(root: str | Path | None) -> list[tuple[str, str]]:
    return [(run_label(r), r["path"]) for r in runs.list_runs(root) if r["adapter"]]


def zip_listing(path: str | Path) -> str:
    with zipfile.ZipFile(path) as zf:
        rows = [f"| `{i.filename}` | {i.file_size / 1024:,.1f} KB |" for i in zf.infolist()]
    size = Path(path).stat().st_size / 2**20
    return "\n".join([f"**{Path(path).name}** ({size:.1f} MB):", "", "| file | size |", "|---|---|", *rows])


def adapter_picker(run_dir: str | None) -> tuple[list[tuple[str, str]], str | None]:
    """The run's adapters for the picker (the best one marked) and the default: the best when it is not the last."""
    return runs.adapter_options(Path(run_dir)) if run_dir else ([], None)


def export_zip(run_dir: str | None, checkpoint: str | None = None) -> tuple[Path, Path, str]:
    """(zip kept in the run's exports/ folder, a copy to hand to the browser, markdown listing its contents).

    The browser gets a copy in a temp folder so the web server never needs to serve the runs folder."""
    if not run_dir:
        raise ValueError("Pick a run with a saved adapter (finish or stop a run on the Train tab first).")
    path = export.export_adapter_zip(run_dir, checkpoint=checkpoint)
    return path, _handout(path, "export"), zip_listing(path)


def export_merged_zip(run_dir: str | None, checkpoint: str | None = None) -> tuple[Path, Path]:
    """(merged model folder, a zip of it for download). Stored, not deflated: safetensors barely compress."""
    if not run_dir:
        raise ValueError("Pick a run with a saved adapter first.")
    folder = export.export_merged(run_dir, checkpoint=checkpoint)
    name = export.zip_name(Path(run_dir), checkpoint).replace("-adapter", "-merged", 1)
    dest = scratch_dir("merged") / name
    tmp = dest.with_suffix(f".tmp{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    os.replace(tmp, dest)
    return folder, dest


GGUF_TYPES = [("auto: Q8_0 below 1B parameters, Q4_K_M from 1B", "auto")] + [
    (f"{q.upper()}: {help_}", q) for q, help_ in llamacpp.QUANT_HELP.items()]


def _handout(path: Path, prefix: str) -> Path:
    """A copy of `path` in a scratch folder for the browser (a hard link where the file system allows: GGUF zips
    are large)."""
    dest = scratch_dir(prefix) / path.name  # a fresh folder
    try:
        os.link(path, dest)
    except OSError:
        shutil.copy2(path, dest)
    return dest


def agreement_frame(result):
    import pandas as pd
    return pd.DataFrame([{"prompt": r["prompt"], "PyTorch (merged)": r["pytorch"], "GGUF": r["gguf"],
                          "same answer (tokens agreeing)": f"{'yes' if r['identical'] else 'no'} "
                                                           f"({r['same_tokens']}/{r['tokens']})"}
                         for r in result.agreement])


def gguf_summary(result) -> str:
    from studio.export.gguf.report import files_table, stages_table
    where = f"**{result.zip.name}**" if result.zip else f"the folder `{result.folder}` (too large to zip)"
    return (f"{where}: {result.summary}; {result.adapter_summary}. The GGUF's embedded chat template "
            f"{'matches' if result.template_matches else 'does not match'} the tokenizer's.\n\n"
            f"{files_table(result)}\n\n{stages_table(result)}")


def export_gguf_zip(run_dir: str | None, checkpoint: str | None, quant: str, progress=None):
    """(GGUFExport, a copy of its zip for the browser or None, agreement DataFrame, markdown summary)."""
    from studio.export.gguf import export_gguf
    if not run_dir:
        raise ValueError("Pick a run with a saved adapter first.")
    result = export_gguf(run_dir, quant, checkpoint, progress=progress)
    download = _handout(result.zip, "gguf") if result.zip else None
    return result, download, agreement_frame(result), gguf_summary(result)


# --- the tab --------------------------------------------------------------------------------------

@dataclass
class ExportTab:
    run: gr.Dropdown
    checkpoint: gr.Dropdown
    refresh: gr.Button
    merged: gr.Checkbox
    export: gr.Button
    status: gr.HTML
    file: gr.File
    contents: gr.Markdown
    merged_file: gr.File
    gguf_type: gr.Dropdown
    gguf_button: gr.Button
    gguf_status: gr.HTML
    gguf_file: gr.File
    gguf_summary: gr.Markdown
    gguf_table: gr.Dataframe


def build() -> ExportTab:
    gr.Markdown("Download the adapter (a few MB) to use it anywhere with Hugging Face PEFT: "
                "`PeftModel.from_pretrained(base_model, 'folder-you-unzipped')`. The zip holds the adapter "
                "weights and config, the tokenizer, the run's config.yaml and metrics.jsonl, a loss-curve PNG and "
                "a README.md model card.", elem_classes="studio-lead")
    with gr.Row():
        run = gr.Dropdown(choices=[], label="Run", info="Runs with a saved adapter.", elem_id="export-run", scale=4)
        checkpoint = gr.Dropdown(choices=[], label="Adapter", elem_id="export-checkpoint", scale=3,
                                 info="The final adapter or a checkpoint; the one with the lowest eval loss is "
                                      "marked ★ and chosen when it is not the last.")
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=90)
    merged = gr.Checkbox(False, label="Also build the merged full model (safetensors)",
                         info="The base with the adapter folded in: loads without PEFT, but is as large as the base "
                              "(≈540 MB for the demo model) and takes a while.")
    export_btn = gr.Button("⬇ Export adapter (.zip)", variant="primary", elem_id="export-button")
    status = gr.HTML(visible=False)
    with gr.Row(equal_height=False):
        file = gr.File(label="Adapter zip — click to download", interactive=False, elem_id="export-file")
        merged_file = gr.File(label="Merged model zip", interactive=False, visible=False)
    contents = gr.Markdown(elem_id="export-contents")
    with gr.Accordion("GGUF for llama.cpp, Ollama and LM Studio", open=True):
        gr.Markdown("The adapter merged into the 16-bit base and quantised, the adapter alone as a GGUF LoRA, and "
                    "Ollama Modelfiles, in one zip. Before it is handed over, llama-server runs the files on held-out "
                    "prompts and the table below compares its greedy answers with the PyTorch model's.")
        missing = llamacpp.available()
        with gr.Row():
            gguf_type = gr.Dropdown(GGUF_TYPES, value="auto", label="GGUF type", elem_id="gguf-type", scale=3,
                                    info="Q8_0 keeps small models' answers; Q4_K_M is the usual size/quality trade "
                                         "for 1B parameters and up.")
            gguf_btn = gr.Button("⬇ Export GGUF + Modelfile", elem_id="gguf-button", scale=1,
                                 interactive=missing is None)
        gguf_status = gr.HTML(box(missing, "warn") if missing else "", visible=missing is not None,
                              elem_id="gguf-status")
        gguf_file = gr.File(label="GGUF zip — click to download", interactive=False, elem_id="gguf-file")
        gguf_summary_md = gr.Markdown(elem_id="gguf-summary")
        gguf_table = gr.Dataframe(label="PyTorch vs GGUF, greedy, same prompt tokens", interactive=False,
                                  wrap=True, elem_id="gguf-agreement")
    return ExportTab(run, checkpoint, refresh, merged, export_btn, status, file, contents, merged_file, gguf_type,
                     gguf_btn, gguf_status, gguf_file, gguf_summary_md, gguf_table)


def wire(t: ExportTab, root: str, tab: gr.Tab, demo: gr.Blocks) -> None:
    def refresh(current):
        choices = run_choices(root)
        paths = [p for _, p in choices]
        return gr.Dropdown(choices=choices, value=current if current in paths else (paths[0] if paths else None))

    for ev in (tab.select, t.refresh.click, demo.load):
        ev(refresh, t.run, t.run)

    def on_run(run_dir):
        choices, default = adapter_picker(run_dir)
        return gr.Dropdown(choices=choices, value=default)

    t.run.change(on_run, t.run, t.checkpoint)

    def on_export(run_dir, ckpt, merged, progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        try:
            progress(0.1, desc="Zipping the adapter")
            path, download, listing = export_zip(run_dir, ckpt)
            merged_out = gr.File(visible=False)
            msg = f"Adapter exported to {path}."
            if merged:
                progress(0.4, desc="Merging the adapter into the base model")
                folder, mzip = export_merged_zip(run_dir, ckpt)
                merged_out = gr.File(str(mzip), visible=True)
                msg += f" Merged model saved in {folder}."
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e))
            return gr.HTML(box(str(e), "error"), visible=True), gr.skip(), gr.skip(), gr.skip()
        return gr.HTML(box(msg, "ok"), visible=True), str(download), listing, merged_out

    t.export.click(on_export, [t.run, t.checkpoint, t.merged], [t.status, t.file, t.contents, t.merged_file])

    def on_gguf(run_dir, ckpt, quant, progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        try:
            result, download, table, summary = export_gguf_zip(run_dir, ckpt, quant,
                                                               progress=lambda f, d: progress(f, desc=d))
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e)[:300])
            return gr.HTML(box(str(e), "error"), visible=True), gr.skip(), gr.skip(), gr.skip()
        msg = f"GGUF exported to {result.folder}" + (f" and {result.zip}" if result.zip else " (too large to zip)")
        return (gr.HTML(box(msg + ".", "ok"), visible=True), str(download) if download else None, summary, table)

    t.gguf_button.click(on_gguf, [t.run, t.checkpoint, t.gguf_type],
                        [t.gguf_status, t.gguf_file, t.gguf_summary, t.gguf_table])
