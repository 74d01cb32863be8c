"""The Data tab's events: a file picked or uploaded is checked at once, and again when its format, column mapping,
system prompt or the Train tab's model, chat template and max length change."""
from __future__ import annotations

import gradio as gr

from ..common import box
from . import checks_panel
from .handlers import handle, replace_upload
from .layout import DataTab
from .origin import file_label, keep_note, restore, upload_choices
from .view import FORMAT_ROLES, NO_DATA, ROLES, DataView, preview_widths


def _outputs(t: DataTab) -> list:  # t.example's update carries the legend (view.colours) too
    return [t.summary, t.error, t.format, *t.columns.values(), t.preview, t.issues, t.hist, t.token_note,
            t.preflight, t.example, t.example_note, t.example_index, t.state, t.preference]


def _updates(view: DataView) -> list:
    roles = FORMAT_ROLES.get(view.format, ())
    col_updates = [gr.Dropdown(choices=[""] + view.columns, value=view.mapping.get(r, ""),
                               visible=view.ok and r in roles) for r in ROLES]
    return [view.message if view.ok else "",
            gr.HTML(box(view.message, "info" if view.message.startswith(NO_DATA) else "error"), visible=True)
            if not view.ok else gr.HTML(visible=False),
            gr.Dropdown(value=view.format) if view.ok else gr.skip(),
            *col_updates,
            gr.Dataframe(value=view.preview, column_widths=preview_widths(view.preview)), view.issues,
            {"rows": view.hist.to_dict("records"), "order": view.hist_order,
             "label": view.hist_label
             or f"Tokens per example — max sequence length {view.max_length}: red bars would be cut",
             "x_title": "tokens per pair (prompt + the longer answer, chat template applied)"
             if view.hist_label else ""}
            if len(view.hist) else None,
            view.token_note, view.preflight, gr.HighlightedText(value=view.example, color_map=view.colours),
            view.example_note,
            gr.Number(maximum=max(view.n_examples, 1)),
            view.config, view.preference]


def _bar(progress):  # gradio draws it once a step is reported; a cached report reports none
    return lambda frac, text: progress(frac, desc=text)


def wire_pick(t: DataTab) -> None:
    """An upload or a bundled sample becomes the file to check (an upload is remembered as chosen here, and the
    session's earlier upload is deleted from gradio's temp folder)."""
    def on_upload(f, chosen):  # the picker names the upload instead of going blank
        if not f:
            return (gr.skip(),) * 4
        return f, gr.Dropdown(choices=upload_choices(f), value=f), replace_upload(chosen, f), ""

    t.upload.upload(on_upload, [t.upload, t.chosen], [t.path, t.sample, t.chosen, t.origin])
    t.sample.input(lambda p: (p, "") if p else (gr.skip(),) * 2, t.sample, [t.path, t.origin])
    # the box names the file; the restore note goes once another file is checked (e.g. a loaded config's)
    t.path.change(lambda p, note: (file_label(p), keep_note(p, note)), [t.path, t.origin], [t.file, t.origin])


def wire_restore(t: DataTab, demo: gr.Blocks, attached) -> None:
    """On page load: the data of the run the Train tab attaches to (`attached()`: its folder, or None), else the
    bundled sample (origin.restore). The check that follows (path.change) fills `t.state` from that file."""
    def on_load(chosen):
        r = restore(attached(), chosen)
        return (r.path, gr.Dropdown(choices=r.choices, value=r.path), r.chosen, r.note,
                gr.skip() if r.system_prompt is None else r.system_prompt)

    demo.load(on_load, [t.chosen], [t.path, t.sample, t.chosen, t.origin, t.system_prompt])


def wire_check(t: DataTab, model, max_length, template=None) -> None:
    """The file is checked when it changes (format detected), and again when its format, column mapping, system
    prompt, invalid-row switch, Example # or the Train tab's model, chat template (`template`, the form's
    model.chat_template; None: auto) and max length change."""
    outs = _outputs(t)
    roles = list(t.columns.values())
    tmpl = [template] if template is not None else [gr.State("auto")]

    # the session's `chosen` comes first: a gr.State input is filled on the server, never from the request
    def detect(chosen, path, system_prompt, skip_invalid, model_source, max_len, idx, chat_template,
               progress=gr.Progress()):  # noqa: B008 — gradio's idiom
        return _updates(handle(path, chosen, "auto", {}, system_prompt, skip_invalid, model_source, max_len, idx,
                               _bar(progress), chat_template))

    def with_format(chosen, path, fmt, system_prompt, skip_invalid, model_source, max_len, idx, chat_template,
                    progress=gr.Progress()):  # noqa: B008
        return _updates(handle(path, chosen, fmt, {}, system_prompt, skip_invalid, model_source, max_len, idx,
                               _bar(progress), chat_template))

    # the 8 role columns are named, not *cols: gradio only fills a Progress given as a positional parameter
    assert len(ROLES) == 8, ROLES

    def with_mapping(chosen, path, fmt, system_prompt, skip_invalid, model_source, max_len, idx, chat_template,
                     c1, c2, c3, c4, c5, c6, c7, c8, progress=gr.Progress()):  # noqa: B008
        cols = (c1, c2, c3, c4, c5, c6, c7, c8)
        mapping = {r: c for r, c in zip(ROLES, cols) if c and r in FORMAT_ROLES.get(fmt, ROLES)}
        return _updates(handle(path, chosen, fmt, mapping, system_prompt, skip_invalid, model_source, max_len, idx,
                               _bar(progress), chat_template))

    base = [t.chosen, t.path, t.system_prompt, t.skip_invalid, model, max_length, t.example_index, *tmpl]
    t.path.change(detect, base, outs, trigger_mode="always_last")
    t.format.input(with_format, [t.chosen, t.path, t.format, *base[2:]], outs, trigger_mode="always_last")
    keep = [t.chosen, t.path, t.format, *base[2:], *roles]
    gr.on([dd.input for dd in roles], with_mapping, keep, outs, trigger_mode="always_last")
    gr.on([t.system_prompt.blur, t.skip_invalid.input, model.change, max_length.change, t.example_index.change]
          + ([template.change] if template is not None else []),
          with_mapping, keep, outs, trigger_mode="always_last")


def wire(t: DataTab, model, max_length, template=None) -> None:
    """Events; `model`, `max_length` and `template` (model.chat_template) are the Train tab's inputs (token counts
    and the preflight depend on them)."""
    wire_pick(t)
    wire_check(t, model, max_length, template)
    checks_panel.wire(t.checks, t.state)
