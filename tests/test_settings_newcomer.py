"""The Train tab's form as a newcomer meets it (issue 23, items 2, 4 and 11): one plain sentence of help per field
(the details behind "More about these settings"), the Training stage and a Start from picker of finished runs in the
main form, the stage's own settings shown only for the stages that read them, the several-GPU settings hidden with
one note on a machine without several GPUs, and the Quick preset saying why its learning rate is not the paper's.
No browser: the form is built in a gr.Blocks and its handlers are called."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from studio import runs
from studio.config import PRESET_NOTES, PRESETS, RunConfig, field_meta
from tests.helpers import handler

WORDS = 30  # "one plain sentence": fewer words than this


def one_sentence(text: str) -> bool:
    """No sentence end ('. ', '? ', '! ') before the text's own end."""
    return not re.search(r"[.?!]\s+\S", text.strip())


def finished_run(root: Path, rid: str, name: str, steps: tuple[int, ...] = (10,)) -> Path:
    """A finished run folder laid out by hand: config.yaml, run.json, status.json, a final adapter (its config only:
    what the pickers look for) and checkpoints at `steps`."""
    d = root / rid
    (d / runs.ADAPTER).mkdir(parents=True)
    RunConfig(name=name).save(d / runs.CONFIG)
    (d / runs.RUN_INFO).write_text(json.dumps({"name": name}), encoding="utf-8")
    (d / runs.STATUS).write_text(json.dumps({"state": "finished", "step": max(steps)}), encoding="utf-8")
    (d / runs.ADAPTER / runs.ADAPTER_CONFIG).write_text("{}", encoding="utf-8")
    for s in steps:
        c = d / runs.CHECKPOINTS / f"checkpoint-{s}"
        c.mkdir(parents=True)
        (c / runs.ADAPTER_CONFIG).write_text("{}", encoding="utf-8")
        (c / runs.TRAINER_STATE).write_text(json.dumps({"global_step": s}), encoding="utf-8")
    return d


@pytest.fixture
def form(tmp_path):
    """(demo, Settings) built and wired as the app does, on an empty runs folder under tmp_path."""
    import gradio as gr

    from studio.ui import settings
    with gr.Blocks() as demo:
        s = settings.build()
        settings.wire(s, gr.State(None), str(tmp_path))
    return demo, s


def test_every_shown_field_has_one_plain_sentence_of_help(form):
    from studio.ui import settings
    _, s = form
    for key, comp in zip(settings.KEYS, s.inputs):
        if comp.visible is False:
            continue
        info = comp.info or ""
        assert info, key
        assert len(info.split()) < WORDS, (key, len(info.split()), info)
        assert one_sentence(info), (key, info)
    # the details are kept: a field whose help was cut keeps its long text in `more`
    assert "AVX512-BF16" in field_meta("model", "compute_dtype")["more"]
    assert "DAPO" in field_meta("train", "grpo_beta")["more"]


def test_details_sit_behind_more_and_the_stage_is_in_the_main_form():
    from studio.ui import settings
    assert ("train", "stage") in settings.COMMON and ("train", "start_from") in settings.COMMON
    assert ("train", "stage") not in settings.ADVANCED
    assert list(settings.ADVANCED_GROUPS)[0] == settings.STAGE_GROUP  # the stage's own settings come first
    more = settings.details_html(settings.ADVANCED_GROUPS["Memory and compute"])
    assert more.startswith("<details") and "More about these settings" in more and "AVX512-BF16" in more
    assert settings.details_html([("train", "seed")]) == ""  # nothing more to say: no link


def test_the_stage_shows_only_its_own_settings(form):
    from studio.ui import settings
    keys = [k[1] for k in settings.ADVANCED_GROUPS[settings.STAGE_GROUP]]
    shown = {st: {k for k, v in zip(keys, settings.stage_visibility(st)) if v} for st in ("sft", "dpo", "kto", "grpo")}
    assert shown["sft"] == set()
    assert shown["dpo"] == {"dpo_beta", "dpo_loss"} and shown["kto"] == {"dpo_beta"}
    assert shown["grpo"] == {"grpo_generations", "grpo_max_completion", "grpo_beta", "grpo_temperature"}
    demo, s = form
    assert s.stage_group.visible is False  # the default preset trains sft
    out = handler(demo, s.by_key("train", "stage"), "change").fn("dpo")
    assert out[1]["visible"] is True and [o["visible"] for o in out[2:]] == settings.stage_visibility("dpo")


def test_start_from_offers_finished_runs_by_name_with_checkpoints(form, tmp_path):
    from studio.ui import settings
    demo, s = form
    sft = finished_run(tmp_path, "20260101-000001-bio", "bio sft", steps=(10, 20))
    busy = finished_run(tmp_path, "20260101-000002-busy", "busy")
    (busy / runs.STATUS).write_text(json.dumps({"state": "running", "step": 3}), encoding="utf-8")
    choices = settings.start_choices(str(tmp_path))
    assert choices == [("bio sft · adapter (final)", str(sft)),
                       ("bio sft · checkpoint-20", str(sft / "checkpoints" / "checkpoint-20")),
                       ("bio sft · checkpoint-10", str(sft / "checkpoints" / "checkpoint-10"))]
    # a preference file sets the stage: the picker is filled then, and again whenever it is opened
    start = s.by_key("train", "start_from")
    out = handler(demo, s.by_key("train", "stage"), "change").fn("dpo")
    assert out[0]["choices"][1:] == [tuple(c) for c in choices]
    assert handler(demo, start, "focus").fn()["choices"][1:] == [tuple(c) for c in choices]
    assert start.allow_custom_value  # a typed folder still goes
    # two runs of one name: each says which by its id
    finished_run(tmp_path, "20260101-000003-bio", "bio sft")
    labels = [label for label, _ in settings.start_choices(str(tmp_path))]
    assert "bio sft (20260101-000003-bio) · adapter (final)" in labels


def test_several_gpu_settings_are_hidden_with_one_note_without_gpus(form):
    from studio.env.devices import gpus_present
    from studio.ui import settings
    if gpus_present() >= 2:
        pytest.skip("this machine has several GPUs: the settings apply and are shown")
    demo, s = form
    for key in settings.MULTI_GPU:
        assert s.by_key(*key).visible is False, key
    notes = [b for b in demo.blocks.values() if "several GPUs" in str(getattr(b, "value", ""))]
    assert len(notes) == 1, [getattr(b, "value", "") for b in notes]


def test_the_quick_preset_says_why_its_learning_rate_is_not_the_papers():
    from studio.ui import settings
    assert PRESETS["quick"]["train"]["learning_rate"] == 1e-3
    note = PRESET_NOTES["quick"]
    assert "1e-3" in note and "2e-4" in note and "paper" in note
    assert note in settings.preset_info("quick") and note not in settings.preset_info("balanced")
    assert set(PRESET_NOTES) == set(PRESETS)
