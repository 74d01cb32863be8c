"""The Data tab's components: `build()` lays them out and returns them as a DataTab."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from studio import data as sdata
from studio.config import field_meta

from ..common import field_input
from . import checks_panel
from .handlers import sample_choices
from .view import ISSUE_COLUMNS, PREVIEW_ROWS, ROLES, SFT_COLOURS


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
    preference: gr.State  # preference_state of the file: {"kind": "sft"|"preference", "stage": a stage name, ...}
    checks: checks_panel.ChecksPanel  # the Checks panel; its `checks` State goes into the run's config at Start
    preflight: gr.Markdown  # the chat template preflight: examples whose answers the assistant mask finds
    file: gr.Textbox  # the Dataset file box: the file's own name (origin.file_label), `path` holds the path
    origin: gr.Markdown  # whose data this is after a reload ("Showing the data of run X: qa30.csv")
    next_train: gr.Button  # "Next: Train →" (app.py switches the tab)


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
            # the path itself is gradio's temp path for an upload: kept in the page (the events read it), but the box
            # the user sees names the file (origin.file_label)
            path = gr.Textbox(interactive=False, elem_id="data-path", visible="hidden")
            file = gr.Textbox(label=field_meta("data", "path")["label"], interactive=False, elem_id="data-file",
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
            origin = gr.Markdown(elem_id="data-origin")
            error = gr.HTML(visible=False, elem_id="data-error")
            summary = gr.Markdown("Loading the sample…", elem_id="data-summary")
            with gr.Tabs():
                with gr.Tab("Preview"):
                    preview = gr.Dataframe(label=f"First {PREVIEW_ROWS} rows as read", interactive=False,
                                           wrap=True, max_height=360, elem_id="data-preview")
                with gr.Tab("Problems"):
                    issues = gr.Dataframe(value=pd.DataFrame(columns=ISSUE_COLUMNS), label="Problems found",
                                          interactive=False, wrap=True, max_height=360, elem_id="data-issues",
                                          # the two sentences get the room; the whole table fits the column
                                          column_widths=["9%", "13%", "33%", "33%", "12%"])
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
            preflight = gr.Markdown(elem_id="data-preflight")
            with gr.Row():
                example_index = gr.Number(value=1, precision=0, label="Example #", minimum=1, scale=0,
                                          min_width=120)
                example_note = gr.Markdown()
            example = gr.HighlightedText(label="One training example as the model sees it",
                                         color_map=dict(SFT_COLOURS), show_legend=True,
                                         combine_adjacent=False, elem_id="data-example")
            next_train = gr.Button("Next: Train →", variant="primary", elem_id="data-next")
    with gr.Accordion("Checks: what a good answer is (scored on this file's answers)", open=False,
                      elem_id="data-checks"):
        checks = checks_panel.build()
    state = gr.State(None)
    chosen = gr.State([])
    preference = gr.State(None)
    return DataTab(sample, upload, path, fmt, cols, system_prompt, skip_invalid, summary, error, preview, issues,
                   hist, token_note, example_index, example, example_note, state, chosen, preference, checks,
                   preflight, file, origin, next_train)
