"""Model and hyperparameters: the form that becomes a RunConfig (part of the Train tab).

Every input is made from the config's own field metadata (label, help, choices), so the page and the
YAML never disagree. The common fields are visible (the Training stage and Start from, a picker of finished runs,
among them); the rest sit under "Advanced", each with one sentence of help (its longer `more` behind "More about
these settings"), the stage's own settings shown only for the stages that read them.
"""
from __future__ import annotations

import html
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio import runs, stages
from studio.env.devices import gpus_present
from studio.runs import group
from studio.config import (DEMO_MODEL, PRESET_LABELS, PRESET_NOTES, PRESETS, DataSettings, RunConfig, TrainSettings,
                           field_meta, preset)

from .common import box, field_input, from_widget, is_slider, run_names, scratch_dir, to_widget

DEFAULT_PRESET = "quick"
DEFAULT_NAME = "my-first-run"
# (section, field) shown up front, row by row; the model source is its own picker. The stage sits up front: an
# uploaded preference file sets it to dpo/kto, and Start from (a picker of finished runs) goes with it.
COMMON_ROWS = [[("run", "name")], [("model", "source")], [("train", "stage"), ("train", "start_from")],
               [("model", "quantization"), ("lora", "r")], [("train", "learning_rate"), ("train", "max_steps")],
               [("train", "epochs"), ("train", "batch_size")], [("train", "max_length"), ("model", "chat_template")]]
COMMON = [k for row in COMMON_ROWS for k in row]
STAGE_GROUP = "Stage: instruction tuning, preference tuning (DPO/KTO) or checks (GRPO)"
# The rest, in groups under "Advanced" (two per row; sliders get a row of their own); the stage's own settings first,
# shown only for the stages that read them (STAGE_ONLY).
ADVANCED_GROUPS = {
    STAGE_GROUP: [("train", "dpo_beta"), ("train", "dpo_loss"), ("train", "grpo_generations"),
                  ("train", "grpo_max_completion"), ("train", "grpo_beta"), ("train", "grpo_temperature")],
    "LoRA": [("lora", "alpha"), ("lora", "target_modules"), ("lora", "dropout")],
    "Optimiser": [("train", "lr_scheduler"), ("train", "optimizer"), ("train", "grad_accum"),
                  ("train", "max_grad_norm"), ("train", "warmup_ratio"), ("train", "weight_decay"),
                  ("train", "neftune_noise_alpha")],
    "Data, evaluation and checkpoints": [("train", "packing"), ("train", "seed"), ("train", "logging_steps"),
                                         ("train", "eval_steps"), ("train", "save_steps"),
                                         ("train", "eval_fraction"), ("train", "checks_eval_rows")],
    "Overfitting, early stopping, checkpoints kept": [("train", "overfit_evals"), ("train", "early_stopping_patience"),
                                                      ("train", "early_stopping_min_delta"),
                                                      ("train", "save_total_limit")],
    "Memory and compute": [("model", "compute_dtype"), ("train", "threads"), ("train", "gradient_checkpointing"),
                           ("model", "double_quant"), ("model", "trust_remote_code"), ("train", "levers")],
    "Several GPUs": [("train", "devices"), ("train", "distributed")],
    "Experiment tracking": [("train", "report_to")],
}
MULTI_GPU = [("train", "devices"), ("train", "distributed")]
ADVANCED = [k for group in ADVANCED_GROUPS.values() for k in group]
KEYS = COMMON + ADVANCED


# --- plain handlers -------------------------------------------------------------------------------

def stage_fields() -> dict[tuple[str, str], tuple[str, ...]]:
    """{(train, field): the stages that read it} for the stage group's fields: each stage's TRL arguments
    (studio.stages trainer_args) are built from a recording TrainSettings, so DPO's beta shows for dpo and kto and
    GRPO's settings for grpo only, without a stage named here. A field no stage reads is always shown."""
    class Recorder:
        def __init__(self):
            self.read, self.train = set(), TrainSettings()

        def __getattr__(self, name):
            self.read.add(name)
            return getattr(self.train, name)

    readers: dict[str, list[str]] = {}
    for name in stages.NAMES:
        rec = Recorder()
        stages.get(name).trainer_args(rec)
        for f in rec.read:
            readers.setdefault(f, []).append(name)
    return {k: tuple(readers[k[1]]) for k in ADVANCED_GROUPS[STAGE_GROUP] if k[1] in readers}


STAGE_ONLY = stage_fields()


def stage_visibility(stage: str) -> list[bool]:
    """Whether each of the stage group's fields (in ADVANCED_GROUPS order) applies to `stage`."""
    return [stage in STAGE_ONLY.get(k, (stage,)) for k in ADVANCED_GROUPS[STAGE_GROUP]]


def start_choices(root: str | Path | None = None) -> list[tuple[str, str]]:
    """Start from's choices: the adapters of every finished or stopped run (its final one, then its checkpoints,
    newest first, the lowest eval loss marked), labelled by run name; each value is what train.start_from takes
    (the run folder for its final adapter, the checkpoint's folder for a checkpoint)."""
    done = [r for r in runs.list_runs(root)
            if r["state"] in ("finished", "stopped") and (r["adapter"] or r["n_checkpoints"])]
    names = run_names(done, state=False)  # two runs of one name: the id too
    out = []
    for r in done:
        who = names[r["path"]]
        for label, n in runs.adapter_options(Path(r["path"]))[0]:
            where = r["path"] if n == runs.FINAL else str(Path(r["path"]) / runs.CHECKPOINTS / n)
            out.append((f"{who} · {label}", where))
    return out


def preset_info(name: str) -> str:
    """The preset radio's help: what it is for, and the chosen preset's own note (why its values differ)."""
    note = PRESET_NOTES.get(name, "")
    return "Fills the fields below with settings that suit the goal; change any of them afterwards." + (
        f" {PRESET_LABELS.get(name, name)}: {note}" if note else "")


def details_html(keys) -> str:
    """A closed "More about these settings" with each field's longer explanation (its `more`), or "" when none has
    one: the form shows one sentence per field, the details stay one click away."""
    items = [(field_meta(*k)["label"], field_meta(*k).get("more")) for k in keys]
    rows = "".join(f"<li><b>{html.escape(label)}</b>: {html.escape(more)}</li>" for label, more in items if more)
    return f'<details class="studio-more"><summary>More about these settings</summary><ul>{rows}</ul></details>' \
        if rows else ""


def model_choices(extra: tuple | list = (), models: list | None = None) -> list[tuple[str, str]]:
    """The demo, model folders in the studio cache (and `extra` ones the user named), the models in the local
    Hugging Face cache (huggingface_hub.scan_cache_dir), then the popular ones (downloaded when a run starts).
    `models`: catalog.catalog()'s list when the caller has it already (it reads every model folder's size)."""
    from studio.models import catalog
    labels = {"demo": "Demo", "local folder": "Local", "hub cache": "Hub (cached)"}
    out = []
    for m in models if models is not None else catalog.catalog(extra):
        label = labels.get(m.where.split(" (")[0], "Popular")
        size = catalog.human_count(m.params)
        name = m.name.removesuffix(" (demo)")
        out.append((f"{label}: {name} ({size}{', gated' if m.gated else ''})", m.source))
    return out


def get(cfg: RunConfig, key: tuple[str, str]) -> Any:
    section, name = key
    return getattr(cfg, name) if section == "run" else getattr(getattr(cfg, section), name)


def config_values(cfg: RunConfig, keys=KEYS) -> list:
    return [to_widget(get(cfg, k), *k) for k in keys]


def values_to_config(values: list | tuple, data: dict | None = None, keys=KEYS, checks: list | None = None
                     ) -> RunConfig:
    """The form's values (in `keys` order) plus the Data tab's DataSettings dict and its Checks panel's checks (a
    list of check mappings) -> a validated RunConfig.

    Raises ValueError with the config's own sentence (e.g. 'LoRA rank must be a whole number ...', or the grpo
    stage's 'add at least one check')."""
    sections: dict[str, dict] = {"model": {}, "lora": {}, "train": {}}
    name = DEFAULT_NAME
    for (section, field), v in zip(keys, values):
        v = from_widget(section, field, v)
        if section == "run":
            name = v
        else:
            sections[section][field] = v
    d = dict(data) if data else {}
    return RunConfig(name=name, model=sections["model"], lora=sections["lora"], train=sections["train"],
                     data=DataSettings(**d) if d else DataSettings(), checks=list(checks or []))


def preset_values(name: str, run_name: str, model_source: str, keys=KEYS) -> list:
    """All fields as the preset sets them; the run name and model the user chose are kept."""
    cfg = preset(name if name in PRESETS else DEFAULT_PRESET)
    cfg = cfg.replace(model={"source": model_source or DEMO_MODEL})
    if run_name and run_name.strip():
        cfg = cfg.replace(name=run_name)
    return config_values(cfg, keys)


def memory_html(values: list | tuple, data: dict | None = None, device: str | None = None,
                checks: list | None = None) -> str:
    """The memory estimate (GPU VRAM on CUDA, RAM on CPU) as a small box; a config error shows instead."""
    try:
        cfg = values_to_config(values, data, checks=checks)
    except ValueError as e:
        return box(str(e), "error")
    from studio.models import catalog
    remote = catalog.source_problem(cfg.model.source, cfg.model.trust_remote_code)
    if remote:  # said before Start, which refuses it
        return box(remote, "error")
    try:
        from studio import memory  # written in parallel; until it exists the estimate is simply missing
    except ImportError:
        return box("Memory estimate unavailable (studio.memory is not installed).", "info")
    try:
        # a popular model's shipped shape stands in for its config.json until it is downloaded
        known = catalog.local_config(cfg.model.source)
        shape = {"model_config": catalog.text_config(known)} if known else {}
        est = memory.estimate(cfg, device, **shape)
    except Exception as e:  # noqa: BLE001 — an unknown hub id, a model not downloaded yet: the form still works
        return box(f"Memory estimate unavailable: {e}", "info")
    where = "GPU memory" if str(getattr(est, "device", "")).startswith("cuda") else "RAM"
    parts = ", ".join(f"{k} {v:.2f} GB" for k, v in (getattr(est, "breakdown", {}) or {}).items()
                      if isinstance(v, (int, float)))
    text = f"Estimated {where}: {est.total_gb:.2f} GB on {est.device}" + (f" ({parts})" if parts else "")
    if not est.fits:
        return box(f"{text}. ⚠ {est.warning or 'This will probably not fit.'}", "warn")
    return box(text + (f". {est.warning}" if est.warning else ". Fits."), "ok")


def config_text(values: list | tuple, data: dict | None, root: str | Path | None,
                checks: list | None = None) -> tuple[str, str]:
    """(YAML, the equivalent shell command) for the form as it is now."""
    cfg = values_to_config(values, data, checks=checks)
    out = Path(runs.runs_root(root)) / f"<timestamp>-{runs.slug(cfg.name)}"
    fname = f"{runs.slug(cfg.name)}.yaml"
    cmd = (f"# save the YAML above as {fname}, then:\n"
           f"studio train {shlex.quote(fname)} --output {shlex.quote(str(out))}\n"
           f"# or, without the console script:\npython -m studio train {shlex.quote(fname)}")
    if cfg.train.devices != 1:
        cmd += "\n\n" + group.explain_launch(cfg, fname, str(out))
    return cfg.to_yaml(), cmd


def save_config(values: list | tuple, data: dict | None, checks: list | None = None) -> Path:
    cfg = values_to_config(values, data, checks=checks)
    return cfg.save(scratch_dir("config") / f"{runs.slug(cfg.name)}.yaml")


def load_config(path: str | Path) -> tuple[list, dict | None]:
    """(form values, the data section as a dict when its file exists here, else None)."""
    cfg = RunConfig.load(path)
    data = None
    if cfg.data.path and Path(cfg.data.path).expanduser().is_file():
        data = {"path": str(Path(cfg.data.path).expanduser()), "format": cfg.data.format,
                "columns": cfg.data.columns.used(), "system_prompt": cfg.data.system_prompt,
                "skip_invalid": cfg.data.skip_invalid}
    return config_values(cfg), data


def load_checks(path: str | Path) -> list:
    """The checks of a config file (its checks: list, as mappings); ValueError for a bad file."""
    return list(RunConfig.load(path).checks)


def template_input(value: str) -> gr.Dropdown:
    """model.chat_template: "auto", a named template (shown by the models it suits) or a typed .jinja path."""
    from studio.models.templates import TEMPLATES
    meta = field_meta("model", "chat_template")
    choices = [("auto: the tokenizer's own (ChatML where it has none)", "auto")]
    choices += [(f"{t.name}: {t.label}", t.name) for t in TEMPLATES.values()]
    return gr.Dropdown(choices=choices, value=value, allow_custom_value=True, label=meta["label"],
                       info=meta["help"], elem_id="model-chat-template")


# --- the form -------------------------------------------------------------------------------------

@dataclass
class Settings:
    preset: gr.Radio
    inputs: list  # components in KEYS order
    model: gr.Dropdown
    name: gr.Textbox
    max_length: gr.Number
    memory: gr.HTML
    show: gr.Button
    yaml: gr.Code
    command: gr.Code
    save: gr.Button
    saved: gr.File
    load: gr.UploadButton
    chat_template: Any = None  # gr.Dropdown of model.chat_template (the Data tab renders with it)
    stage_group: Any = None  # gr.Column of the stage's own settings, hidden when the stage reads none of them

    def stage_inputs(self) -> list:
        """The stage group's inputs, in ADVANCED_GROUPS order (shown or hidden by stage_visibility)."""
        return [self.by_key(*k) for k in ADVANCED_GROUPS[STAGE_GROUP]]

    def by_key(self, section: str, name: str):
        return self.inputs[KEYS.index((section, name))]


def _gpu_note(gpus: int) -> str:
    return (f"These apply on a machine with several GPUs; this one has {'one' if gpus == 1 else 'none'}, so its runs "
            f"use one process (the settings are kept in the config; `studio train --devices N` elsewhere).")


def start_input(value: str) -> gr.Dropdown:
    """train.start_from: a picker of finished runs' adapters (filled on focus and when the stage changes, from the
    runs folder), which still takes a typed folder."""
    meta = field_meta("train", "start_from")
    return gr.Dropdown(choices=[("(none: a new adapter)", "")], value=value, allow_custom_value=True,
                       label=meta["label"], info=meta["help"], elem_id="train-start-from")


def build() -> Settings:
    cfg = preset(DEFAULT_PRESET).replace(name=DEFAULT_NAME)
    comps: dict[tuple[str, str], Any] = {}
    gpus = gpus_present()
    shown = dict(zip(ADVANCED_GROUPS[STAGE_GROUP], stage_visibility(cfg.train.stage)))

    def make(key):
        section, name = key
        value = to_widget(get(cfg, key), *key)
        eid = f"{section}-{name}".replace("_", "-")
        if key == ("model", "source"):
            meta = field_meta("model", "source")
            comps[key] = gr.Dropdown(choices=model_choices(), value=DEMO_MODEL, allow_custom_value=True,
                                     label=meta["label"], info=meta["help"], elem_id="model-source")
        elif key == ("model", "chat_template"):
            comps[key] = template_input(value)
        elif key == ("train", "start_from"):
            comps[key] = start_input(value)
        elif key in MULTI_GPU and gpus < 2:  # hidden: the group's note says once why
            comps[key] = field_input(section, name, value, elem_id=eid, interactive=False, visible=False,
                                     info=field_meta(section, name)["help"] + " " + _gpu_note(gpus))
        else:
            comps[key] = field_input(section, name, value, elem_id=eid, visible=shown.get(key, True))

    preset_radio = gr.Radio(choices=[(PRESET_LABELS[k], k) for k in PRESETS], value=DEFAULT_PRESET,
                            label="Preset", info=preset_info(DEFAULT_PRESET), elem_id="preset")
    for row in COMMON_ROWS:
        with gr.Row():
            for key in row:
                make(key)
    gr.HTML(details_html(COMMON))
    groups = {}
    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
        for title, keys in ADVANCED_GROUPS.items():
            with gr.Column(visible=title != STAGE_GROUP or any(shown.values())) as groups[title]:
                gr.Markdown(f"**{title}**", elem_classes="studio-group")
                if keys == MULTI_GPU and gpus < 2:
                    gr.Markdown(_gpu_note(gpus), elem_classes="studio-group-note")
                pairs = [k for k in keys if not is_slider(*k)]
                for i in range(0, len(pairs), 2):
                    with gr.Row():
                        for key in pairs[i:i + 2]:
                            make(key)
                for key in keys:
                    if is_slider(*key):
                        make(key)
                if not (keys == MULTI_GPU and gpus < 2):
                    gr.HTML(details_html(keys))
    memory = gr.HTML(box("Estimating memory…", "info"), elem_id="memory-estimate")
    with gr.Accordion("Config file", open=False):
        with gr.Row():
            show = gr.Button("Show config", size="sm")
            save = gr.Button("Save config", size="sm")
            load = gr.UploadButton("Load config…", file_types=[".yaml", ".yml"], size="sm")
        yaml = gr.Code(language="yaml", label=runs.CONFIG, interactive=False, visible=False)
        command = gr.Code(language="shell", label="The same run from a terminal", interactive=False, visible=False)
        saved = gr.File(label="Saved config", visible=False, interactive=False)
    inputs = [comps[k] for k in KEYS]
    return Settings(preset_radio, inputs, comps[("model", "source")], comps[("run", "name")],
                    comps[("train", "max_length")], memory, show, yaml, command, save, saved, load,
                    comps[("model", "chat_template")], groups[STAGE_GROUP])


def wire(s: Settings, data_state: gr.State, root: str, checks: gr.State | None = None) -> None:
    """The form's events; `checks` is the Data tab's Checks panel State (a list of check mappings)."""
    extra = [checks] if checks is not None else []

    def split(args):  # (data, checks, *values) when the checks are wired, else (data, *values)
        return (args[0], args[1], args[2:]) if extra else (args[0], None, args[1:])

    def on_preset(name, run_name, model_source):
        return [gr.Radio(info=preset_info(name)), *preset_values(name, run_name, model_source)]

    s.preset.input(on_preset, [s.preset, s.name, s.model], [s.preset, *s.inputs])
    wire_stage(s, root)

    def on_change(*args):
        data, chosen, values = split(args)
        return memory_html(values, data, checks=chosen)

    # one listener for all fields: a preset changes ~30 of them at once and should cost one estimate
    gr.on([c.change for c in s.inputs] + [data_state.change] + [c.change for c in extra], on_change,
          [data_state, *extra, *s.inputs], s.memory, trigger_mode="always_last", show_progress="hidden")

    def on_show(*args):
        data, chosen, values = split(args)
        try:
            y, cmd = config_text(values, data, root, checks=chosen)
        except ValueError as e:
            gr.Warning(str(e))
            return gr.skip(), gr.skip()
        return gr.Code(y, visible=True), gr.Code(cmd, visible=True)

    s.show.click(on_show, [data_state, *extra, *s.inputs], [s.yaml, s.command])

    def on_save(*args):
        data, chosen, values = split(args)
        try:
            return gr.File(str(save_config(values, data, chosen)), visible=True)
        except ValueError as e:
            gr.Warning(str(e))
            return gr.skip()

    s.save.click(on_save, [data_state, *extra, *s.inputs], s.saved)


def wire_stage(s: Settings, root: str) -> None:
    """The stage shows its own settings only; Start from offers the finished runs, read again whenever it is opened
    and whenever the stage changes (an uploaded preference file sets dpo or kto)."""
    start = s.by_key("train", "start_from")
    none = [("(none: a new adapter)", "")]

    def on_stage(stage):
        shown = stage_visibility(stage)
        return [gr.update(choices=none + start_choices(root)), gr.update(visible=any(shown)),
                *(gr.update(visible=v) for v in shown)]

    s.by_key("train", "stage").change(on_stage, s.by_key("train", "stage"), [start, s.stage_group, *s.stage_inputs()],
                                      show_progress="hidden")
    start.focus(lambda: gr.update(choices=none + start_choices(root)), None, start, show_progress="hidden")
