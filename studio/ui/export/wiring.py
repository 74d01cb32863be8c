"""The Export tab's events, one function per feature: the run and adapter pickers, the adapter zip (and the merged
model), and the GGUF export; `wire` attaches them all."""
from __future__ import annotations

import gradio as gr

from ..common import box
from .handlers import adapter_picker, export_gguf_zip, export_merged_zip, export_zip, run_picker
from .layout import ExportTab


def wire_pickers(t: ExportTab, root: str, tab: gr.Tab, demo: gr.Blocks) -> None:
    """The runs with an adapter (when the tab is shown, on Refresh and on load), and the chosen run's adapters."""
    def refresh(current):
        choices, value = run_picker(root, current)
        return gr.Dropdown(choices=choices, value=value)

    for ev in (tab.select, t.refresh.click, demo.load):
        ev(refresh, t.run, t.run)

    def on_run(run_dir):
        choices, default = adapter_picker(run_dir)
        return gr.Dropdown(choices=choices, value=default)

    t.run.change(on_run, t.run, t.checkpoint)


def wire_zip(t: ExportTab) -> None:
    """Export adapter (.zip), and the merged model when its box is ticked."""
    def on_export(run_dir, ckpt, merged, progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        try:
            progress(0.1, desc="Zipping the adapter")
            path, download, listing = export_zip(run_dir, ckpt)
            merged_out = gr.File(visible=False)
            msg = f"Adapter exported to {path}."
            if merged:
                progress(0.4, desc="Merging the adapter into the base model")
                notes: list[str] = []
                folder, mzip = export_merged_zip(run_dir, ckpt, say=notes.append)
                merged_out = gr.File(str(mzip), visible=True)
                msg += f" Merged model saved in {folder}." + "".join(f" {n}" for n in notes)
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e))
            return gr.HTML(box(str(e), "error"), visible=True), gr.skip(), gr.skip(), gr.skip()
        return gr.HTML(box(msg, "ok"), visible=True), str(download), listing, merged_out

    t.export.click(on_export, [t.run, t.checkpoint, t.merged], [t.status, t.file, t.contents, t.merged_file])


def wire_gguf(t: ExportTab) -> None:
    """Export GGUF + Modelfile: the files, the summary and the PyTorch-vs-GGUF table."""
    def on_gguf(run_dir, ckpt, quant, progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        try:
            result, download, table, summary = export_gguf_zip(run_dir, ckpt, quant,
                                                               progress=lambda f, d: progress(f, desc=d))
        except Exception as e:  # noqa: BLE001 — the UI boundary: whatever went wrong is said on the page
            gr.Warning(str(e)[:300])
            return gr.HTML(box(str(e), "error"), visible=True), gr.skip(), gr.skip(), gr.skip()
        msg = f"GGUF exported to {result.folder}" + (f" and {result.zip}" if result.zip else " (too large to zip)")
        msg += "." + "".join(f" {n}" for n in result.notes)
        return (gr.HTML(box(msg, "ok"), visible=True), gr.File(str(download) if download else None,
                visible=download is not None), summary, gr.Dataframe(table, visible=True))

    t.gguf_button.click(on_gguf, [t.run, t.checkpoint, t.gguf_type],
                        [t.gguf_status, t.gguf_file, t.gguf_summary, t.gguf_table])


def wire(t: ExportTab, root: str, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Every event of the Export tab; `tab` and `demo` refresh the run list when the tab is shown or the page loads."""
    wire_pickers(t, root, tab, demo)
    wire_zip(t)
    wire_gguf(t)
