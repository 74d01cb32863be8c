"""The Export tab's components: `build()` lays them out and returns them as an ExportTab."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio.export import llamacpp

from ..common import box
from .handlers import GGUF_TYPES


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
        run = gr.Dropdown(choices=[], label="Run", elem_id="export-run",
                          info="Runs with a saved adapter. ★ marks the one chosen first: the lowest eval loss among "
                               "runs on the same data and held-out rows as the newest.", scale=4)
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
        # hidden until a GGUF export fills them: an empty file box and a table headed "1 2 3" said nothing
        gguf_file = gr.File(label="GGUF zip — click to download", interactive=False, elem_id="gguf-file",
                            visible=False)
        gguf_summary_md = gr.Markdown(elem_id="gguf-summary")
        gguf_table = gr.Dataframe(label="PyTorch vs GGUF, greedy, same prompt tokens", interactive=False,
                                  wrap=True, elem_id="gguf-agreement", visible=False)
    return ExportTab(run, checkpoint, refresh, merged, export_btn, status, file, contents, merged_file, gguf_type,
                     gguf_btn, gguf_status, gguf_file, gguf_summary_md, gguf_table)
