"""The Data tab's Checks panel: a form that adds checks (what a good answer is), the list with Remove, the YAML beside
it (edit and Apply), the preflight of the checks on the tab's file and "Try it". `build()` lays it out and returns a
ChecksPanel; `wire()` attaches its events. The handlers are `checks` (plain functions).
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from studio.checks import NORMALIZERS, TYPES

from ..common import box
from . import checks as ch

FIRST_TYPE = "exact"


@dataclass
class ChecksPanel:
    checks: gr.State  # a list of check mappings (a run config's `checks:`); Start puts it into the RunConfig
    name: gr.Textbox
    type: gr.Dropdown
    weight: gr.Number
    extract: gr.Dropdown
    extract_a: gr.Textbox
    extract_b: gr.Textbox
    fields: dict  # field name -> its input
    add: gr.Button
    error: gr.HTML
    listing: gr.Dataframe
    remove_name: gr.Dropdown
    remove: gr.Button
    yaml: gr.Code
    apply: gr.Button
    note: gr.Markdown
    table: gr.Dataframe
    verdicts: gr.Markdown
    failing: gr.Dataframe
    try_row: gr.Number
    try_text: gr.Textbox
    try_go: gr.Button
    try_row_md: gr.Markdown
    try_table: gr.Dataframe
    try_error: gr.HTML


def _field_input(name: str, typ: str):
    kind, label, info = ch.FIELD_UI.get(name, ("yaml", name, "As YAML."))
    visible, label = ch.field_shown(typ)[name]
    common = {"label": label, "info": info or None, "visible": visible, "elem_id": f"check-field-{name}"}
    if kind == "bool":
        return gr.Checkbox(value=ch.field_default(name), **common)
    if kind in ("number", "int"):
        return gr.Number(value=None, precision=0 if kind == "int" else None, minimum=0, **common)
    if kind == "multi":
        return gr.CheckboxGroup(choices=list(NORMALIZERS), value=["strip"], **common)
    if kind == "choice":
        return gr.Dropdown(choices=ch.CHOICES[name], value=ch.field_default(name), **common)
    if kind == "column":
        return gr.Dropdown(choices=[""], value="", allow_custom_value=True, **common)
    return gr.Textbox(value="", lines=3 if kind in ("lines", "yaml") else 1, **common)


def _form() -> tuple:
    name = gr.Textbox(label="Name", placeholder="e.g. right_answer (empty: the type's name)", elem_id="check-name",
                      info="Letters, digits, _ . -; it names the check's metric.")
    with gr.Row():
        typ = gr.Dropdown(choices=list(TYPES), value=FIRST_TYPE, label="Type", info=TYPES[FIRST_TYPE],
                          elem_id="check-type")
        weight = gr.Number(value=1, minimum=0, label="Weight", info="Its share of the total score (GRPO reward).",
                           elem_id="check-weight", scale=0, min_width=140)
    with gr.Row():
        extract = gr.Dropdown(choices=[(f"{k}: {v}", k) for k, v in ch.EXTRACTS.items()], value="whole",
                              label="Extract", info="Which part of the answer is checked (and the same part of the "
                                                    "reference).", elem_id="check-extract")
        extract_a = gr.Textbox(label="", visible=False, elem_id="check-extract-a")
        extract_b = gr.Textbox(label="", visible=False, elem_id="check-extract-b")
    fields = {f: _field_input(f, FIRST_TYPE) for f in ch.all_fields()}
    add = gr.Button("Add check", variant="primary", elem_id="check-add")
    return name, typ, weight, extract, extract_a, extract_b, fields, add


def build() -> ChecksPanel:
    """The panel, inside the caller's layout (an accordion of the Data tab)."""
    gr.Markdown("A **check** scores an answer from 0 to 1: the right number, valid JSON, a required word, a length "
                "limit. Here they score this file's own answers (a check that fails them is almost always wrong); "
                "Start puts them in the run's config, where they compare the base and the tuned model and are the "
                "rewards of the GRPO stage.", elem_classes="studio-lead")
    checks = gr.State([])
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            name, typ, weight, extract, extract_a, extract_b, fields, add = _form()
        with gr.Column(scale=1, min_width=320):
            error = gr.HTML(visible=False, elem_id="checks-error")
            listing = gr.Dataframe(value=pd.DataFrame(columns=ch.LIST_COLUMNS), label="Checks", interactive=False,
                                   wrap=True, elem_id="checks-list")
            with gr.Row():
                remove_name = gr.Dropdown(choices=[], label="Check to remove", elem_id="check-remove-name")
                remove = gr.Button("Remove", size="sm", scale=0, min_width=100, elem_id="check-remove")
            yaml = gr.Code(value=ch.yaml_of([]), language="yaml", interactive=True, lines=8, elem_id="checks-yaml",
                           label="The checks as YAML (a run config's checks:): edit, then Apply")
            apply = gr.Button("Apply YAML", size="sm", elem_id="checks-apply")
    note = gr.Markdown(elem_id="checks-note")
    table = gr.Dataframe(value=pd.DataFrame(columns=ch.PF_COLUMNS), label="Pass rate on the file's own answers",
                         interactive=False, elem_id="checks-preflight")
    verdicts = gr.Markdown(elem_id="checks-verdicts")
    failing = gr.Dataframe(value=pd.DataFrame(columns=ch.FAIL_COLUMNS), label="First failing rows",
                           interactive=False, wrap=True, max_height=300, elem_id="checks-failing")
    gr.Markdown("**Try it**: score any answer against one row of the file.")
    with gr.Row(equal_height=False):
        try_row = gr.Number(value=1, precision=0, minimum=1, label="Row", info="The row number in the file.",
                            scale=0, min_width=140, elem_id="try-row")
        try_text = gr.Textbox(label="Answer to score", lines=3, scale=3, elem_id="try-answer",
                              placeholder="Type an answer (the row's own answer is filled in)")
        try_go = gr.Button("Score it", scale=0, min_width=120, elem_id="try-go")
    try_row_md = gr.Markdown(elem_id="try-row-text")
    try_error = gr.HTML(visible=False, elem_id="try-error")
    try_table = gr.Dataframe(value=pd.DataFrame(columns=ch.TRY_COLUMNS), label="Scores", interactive=False,
                             wrap=True, elem_id="try-scores")
    return ChecksPanel(checks, name, typ, weight, extract, extract_a, extract_b, fields, add, error, listing,
                       remove_name, remove, yaml, apply, note, table, verdicts, failing, try_row, try_text, try_go,
                       try_row_md, try_table, try_error)


# --- events ---------------------------------------------------------------------------------------

def _error(msg: str):
    return gr.HTML(box(msg, "error"), visible=True) if msg else gr.HTML(visible=False)


def refresh_outputs(p: ChecksPanel) -> list:
    return [p.yaml, p.listing, p.remove_name, p.fields["compare_to"], p.note, p.table, p.verdicts, p.failing,
            p.error]


def refresh(checks, state) -> list:
    """Everything that shows the checks and their preflight on the file (`state`: DataTab.state)."""
    v = ch.preflight_view(checks, state)
    names = [c["name"] for c in checks or []]
    return [ch.yaml_of(checks), ch.list_frame(checks),
            gr.Dropdown(choices=names, value=names[-1] if names else None),
            gr.Dropdown(choices=["", *v.columns]),
            v.note, v.table, v.verdicts, v.failing, _error(v.error)]


def on_type(typ) -> list:
    shown = ch.field_shown(typ)
    return [gr.Dropdown(info=TYPES.get(typ, ""))] + [gr.update(visible=shown[f][0], label=shown[f][1])
                                                      for f in ch.all_fields()]


def on_extract(kind) -> list:
    a, b = ch.EXTRACT_ARGS.get(kind, ("", ""))
    return [gr.Textbox(visible=bool(a), label=a), gr.Textbox(visible=bool(b), label=b)]


def on_add(checks, name, typ, weight, extract, extract_a, extract_b, *values):
    """The form's check added to the list; a bad one leaves the list as it is and says why."""
    try:
        item = ch.form_check(checks, name, typ, weight, extract, extract_a, extract_b,
                             dict(zip(ch.all_fields(), values)))
        return ch.add(checks, item), _error(""), ""
    except ValueError as e:
        return gr.skip(), _error(str(e)), gr.skip()


def on_remove(checks, name):
    try:
        return ch.remove(checks, name), _error("")
    except ValueError as e:
        return gr.skip(), _error(str(e))


def on_apply(text):
    try:
        return ch.apply_yaml(text), _error("")
    except ValueError as e:
        return gr.skip(), _error(str(e))


def on_row(state, number):
    return ch.row_text(state, number)


def on_try(checks, state, number, text):
    frame, msg = ch.try_frame(checks, state, number, text)
    return frame, _error(msg)


def wire(p: ChecksPanel, data_state: gr.State) -> None:
    """The panel's events; `data_state` is the Data tab's checked settings (DataTab.state)."""
    field_inputs = [p.fields[f] for f in ch.all_fields()]
    p.type.input(on_type, p.type, [p.type, *field_inputs], show_progress="hidden")
    p.extract.input(on_extract, p.extract, [p.extract_a, p.extract_b], show_progress="hidden")
    p.add.click(on_add, [p.checks, p.name, p.type, p.weight, p.extract, p.extract_a, p.extract_b, *field_inputs],
                [p.checks, p.error, p.name])
    p.remove.click(on_remove, [p.checks, p.remove_name], [p.checks, p.error])
    p.apply.click(on_apply, p.yaml, [p.checks, p.error])
    # the checks or the file changed: the YAML, the list and the preflight follow (also when Load config sets them)
    gr.on([p.checks.change, data_state.change], refresh, [p.checks, data_state], refresh_outputs(p),
          trigger_mode="always_last")
    gr.on([p.try_row.change, data_state.change], on_row, [data_state, p.try_row], [p.try_row_md, p.try_text],
          trigger_mode="always_last", show_progress="hidden")
    gr.on([p.try_go.click, p.try_text.submit], on_try, [p.checks, data_state, p.try_row, p.try_text],
          [p.try_table, p.try_error])
