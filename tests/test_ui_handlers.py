"""The UI's handlers, called as plain functions (no browser), on the tiny random model.

The Train tab tests start one short real run through the tab's own handler (a subprocess, as the UI
does); the Chat and Export tests use the session's shared finished run (conftest `trained_run`).
"""
from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest

from studio import runs
from studio.config import PRESETS, RunConfig, field_meta
from tests.helpers import SAMPLES


# --- Data tab -------------------------------------------------------------------------------------

def test_inspect_sample_shows_format_counts_histogram_and_trained_tokens(tiny_model_dir):
    from studio.ui.data.handlers import inspect
    from studio.ui.data.view import CUT, TRAINED

    v = inspect(str(SAMPLES / "pirate_qa.csv"), model_source=str(tiny_model_dir), max_length=64)
    assert v.ok, v.message
    assert v.format == "alpaca" and v.mapping["instruction"] == "instruction" and v.mapping["output"] == "output"
    assert "260" in v.message and "used" in v.message
    assert len(v.preview) == 20 and list(v.preview.columns)[:3] == ["row", "status", "instruction"]
    # the histogram has an edge exactly at the cutoff: every bar is wholly kept or wholly cut
    assert set(v.hist["part"]) == {"fits", "cut at max length"}
    assert v.hist["examples"].sum() == 260
    kept = v.hist[v.hist["part"] == "fits"]["tokens"].tolist()
    assert kept[-1].endswith("–64")
    assert "%" in v.token_note and "64" in v.token_note
    trained = "".join(t for t, label in v.example if label == TRAINED)
    assert trained.startswith("Arr, matey!")
    # example 1 is 76 tokens: its end (with the closing <|im_end|>) is past the cutoff and shown as cut
    cut = "".join(t for t, label in v.example if label == CUT)
    assert cut.rstrip("\n").endswith("<|im_end|>"), cut
    assert "cut" in v.example_note
    full = inspect(str(SAMPLES / "pirate_qa.csv"), model_source=str(tiny_model_dir), max_length=512)
    assert "<|im_end|>" in "".join(t for t, label in full.example if label == TRAINED)
    assert not any(label == CUT for _, label in full.example)
    prompt = "".join(t for t, label in v.example if label is None)
    assert "Who painted the Mona Lisa?" in prompt
    assert all(label in (None, TRAINED, CUT) for _, label in v.example)
    assert v.config == {"path": str(SAMPLES / "pirate_qa.csv"), "format": "alpaca", "system_prompt": "",
                        "columns": {"instruction": "instruction", "input": "input", "output": "output"},
                        "skip_invalid": True}


def test_inspect_reports_bad_rows_as_a_table_and_bad_files_as_a_message(tmp_path, tiny_model_dir):
    from studio.ui.data.handlers import inspect

    p = tmp_path / "qa.csv"
    p.write_text("question,answer\nWhat is 2+2?,4 of course\nEmpty answer?,\nCapital of France?,Paris\n",
                 encoding="utf-8")
    v = inspect(str(p), model_source=str(tiny_model_dir))
    assert v.ok and "**2** of 3 rows will be used" in v.message and "**1** skipped" in v.message
    row = v.issues[v.issues["severity"] == "skipped"].iloc[0]
    assert row["row"] == 2 and row["column"] == "answer" and "empty" in row["problem"]
    assert row["what to do"]

    bad = tmp_path / "notes.txt"
    bad.write_text("hello", encoding="utf-8")
    v = inspect(str(bad), model_source=str(tiny_model_dir))
    assert not v.ok and "notes.txt" in v.message and v.config is None


def test_column_mapping_override_and_format_choice(tmp_path, tiny_model_dir):
    from studio.ui.data.handlers import inspect

    p = tmp_path / "odd.jsonl"
    p.write_text("".join(json.dumps({"q": f"question {i}", "a": f"answer {i}"}) + "\n" for i in range(5)),
                 encoding="utf-8")
    v = inspect(str(p), model_source=str(tiny_model_dir))
    assert not v.ok and "column" in v.message  # nothing to detect from q/a
    v = inspect(str(p), "prompt_completion", {"prompt": "q", "completion": "a"}, model_source=str(tiny_model_dir))
    assert v.ok, v.message
    assert v.format == "prompt_completion" and v.config["columns"] == {"prompt": "q", "completion": "a"}
    assert v.n_examples == 5


def test_inspect_without_a_tokenizer_still_checks_the_data(tmp_path):
    from studio.ui.data.handlers import inspect

    v = inspect(str(SAMPLES / "pirate_qa.jsonl"), model_source=str(tmp_path / "no-such-model"))
    assert v.ok and v.config is not None
    assert "unavailable" in v.token_note


# --- settings (model and hyperparameters) ----------------------------------------------------------

def test_form_is_labelled_from_the_config_and_numbers_are_number_widgets():
    import gradio as gr

    from studio.ui import settings

    with gr.Blocks():
        s = settings.build()
    for (section, name), comp in zip(settings.KEYS, s.inputs):
        meta = field_meta(section, name)
        assert comp.label == meta["label"], (section, name)
        assert meta["help"] and meta["help"] in (comp.info or ""), (section, name)
        default = meta["default"]
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            assert isinstance(comp, (gr.Number, gr.Slider)), (section, name, type(comp))
        if "choices" in meta:
            assert isinstance(comp, gr.Dropdown)


def test_presets_fill_the_fields_and_keep_model_and_name():
    from studio.ui import settings

    for name in PRESETS:
        values = settings.preset_values(name, "keep-me", "/some/model")
        cfg = settings.values_to_config(values)
        assert cfg.name == "keep-me" and cfg.model.source == "/some/model"
        for section, changes in PRESETS[name].items():
            for k, v in changes.items():
                assert getattr(getattr(cfg, section), k) == v, (name, section, k)


def test_bad_form_values_give_the_config_sentence():
    from studio.ui import settings

    values = settings.preset_values("quick", "x", "demo")
    values[settings.KEYS.index(("lora", "r"))] = 0
    with pytest.raises(ValueError, match="LoRA rank"):
        settings.values_to_config(values)
    values[settings.KEYS.index(("lora", "r"))] = None
    with pytest.raises(ValueError, match="empty"):
        settings.values_to_config(values)
    html = settings.memory_html(values)
    assert "studio-error" in html and "LoRA rank" in html


def test_memory_estimate_is_shown_or_clearly_unavailable(tiny_model_dir):
    from studio.ui import settings

    values = settings.preset_values("quick", "x", str(tiny_model_dir))
    html = settings.memory_html(values, None, device="cpu")
    assert "GB" in html or "unavailable" in html


def test_memory_estimate_shows_fit_and_a_clear_warning(monkeypatch):
    """The contract with studio.memory: estimate(cfg, device) -> total_gb, breakdown, device, fits, warning."""
    import sys
    import types

    import studio
    from studio.ui import settings

    seen = {}

    def estimate(cfg, device=None):
        seen["r"] = cfg.lora.r
        big = cfg.lora.r > 100
        return types.SimpleNamespace(total_gb=30.0 if big else 1.25, breakdown={"weights": 0.1, "activations": 1.0},
                                     device="cuda:0" if big else "cpu", fits=not big,
                                     warning="Needs 30 GB but the GPU has 24 GB: lower the batch size." if big else "")

    fake = types.ModuleType("studio.memory")
    fake.estimate = estimate
    monkeypatch.setitem(sys.modules, "studio.memory", fake)
    monkeypatch.setattr(studio, "memory", fake, raising=False)
    values = settings.preset_values("quick", "x", "demo")
    html = settings.memory_html(values)
    assert seen["r"] == 8 and "1.25 GB" in html and "RAM" in html and "studio-ok" in html
    values[settings.KEYS.index(("lora", "r"))] = 128
    html = settings.memory_html(values)
    assert "GPU memory" in html and "studio-warn" in html and "lower the batch size" in html


def test_show_save_and_load_config(tmp_path, runs_dir):
    from studio.ui import settings

    data = {"path": str(SAMPLES / "pirate_qa.jsonl"), "format": "messages", "columns": {"messages": "messages"},
            "system_prompt": "Be a pirate.", "skip_invalid": True}
    values = settings.preset_values("balanced", "cfg-test", "demo")
    text, cmd = settings.config_text(values, data, runs_dir)
    assert RunConfig.from_yaml(text).train.grad_accum == PRESETS["balanced"]["train"]["grad_accum"]
    assert "studio train cfg-test.yaml --output" in cmd and str(runs_dir) in cmd
    path = settings.save_config(values, data)
    assert path.name == "cfg-test.yaml"
    loaded, data2 = settings.load_config(path)
    assert loaded == values
    assert data2["path"] == data["path"] and data2["system_prompt"] == "Be a pirate."


# --- Train tab ------------------------------------------------------------------------------------

def _wait_done(run_dir: Path, timeout: float = 150) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = runs.status(run_dir)
        if st.get("state") in ("finished", "failed", "stopped"):
            return st
        time.sleep(0.5)
    raise AssertionError(f"run did not end: {runs.status(run_dir)}\n{(run_dir / 'train.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """One real run started through the Train tab's handler: 3 steps on 48 rows."""
    from studio.ui import settings
    from studio.ui.train import handlers

    root = tmp_path_factory.mktemp("ui-runs")
    small = root.parent / "small.jsonl"
    small.write_text("".join((SAMPLES / "pirate_qa.jsonl").read_text(encoding="utf-8").splitlines(True)[:48]),
                     encoding="utf-8")
    data = {"path": str(small), "format": "auto", "columns": {}, "system_prompt": "", "skip_invalid": True}
    values = settings.preset_values("quick", "ui test/run", str(tiny_model_dir))
    for key, v in ((("train", "max_steps"), 3), (("train", "max_length"), 96), (("train", "threads"), 1)):
        values[settings.KEYS.index(key)] = v
    t0 = time.time()
    run_dir, msg = handlers.start_from_form(values, data, root)
    assert run_dir, msg
    # only one run at a time: a second start is refused with a message and leaves no folder behind
    second, msg2 = handlers.start_from_form(values, data, root)
    assert second is None and "still training" in msg2
    assert len([d for d in root.iterdir() if d.is_dir()]) == 1
    # what a reloaded page shows: the run that is training
    assert handlers.attach(root) == run_dir
    st = _wait_done(Path(run_dir))
    assert st["state"] == "finished", (st, (Path(run_dir) / "train.log").read_text()[-2000:])
    return {"root": root, "run_dir": run_dir, "seconds": time.time() - t0, "model": tiny_model_dir}


def test_start_watch_and_list_a_run(trained):
    from studio.ui.train import compare, handlers

    root, run_dir = trained["root"], trained["run_dir"]
    v = handlers.run_view(run_dir, root)
    assert v.state == "finished" and v.can_start and not v.can_stop and not v.can_resume
    assert "finished" in v.html and "step <b>3</b> / 3" in v.html
    tr = v.loss[v.loss["series"] == "train loss"].dropna()
    ev = v.loss[v.loss["series"] == "eval loss"].dropna()
    assert tr["step"].tolist() == [1.0, 2.0, 3.0] and len(ev) >= 1
    assert str(v.loss["step"].dtype) == "float64" and str(v.loss["loss"].dtype) == "float64"
    assert len(v.lr) == 3 and v.lr["learning_rate"].max() > 0
    assert "Saved the adapter" in v.log
    assert "studio train" in v.command and run_dir in v.command
    # an idle poll costs nothing: the signature is unchanged
    assert handlers.run_view(run_dir, root).signature == v.signature
    df = compare.runs_frame(root)
    assert df.iloc[0]["state"] == "finished" and df.iloc[0]["adapter"] == "yes"
    assert df.iloc[0]["name"] == "ui test/run"
    ov = compare.overlay_frame([Path(run_dir).name], root)
    assert set(ov["run"]) == {Path(run_dir).name} and len(ov[ov["series"] == "train loss"]) == 3
    assert len(ov[ov["series"] == "eval loss"]) == len(ev)
    # the charts: train loss a line, each eval loss a dot (a lone one too), no alert on a short healthy run
    loss_fig, lr_fig, grad_fig = v.charts
    traces = {t.name: t for t in loss_fig.data}
    assert traces["train loss"].mode == "lines" and list(traces["train loss"].x) == [1, 2, 3]
    assert "markers" in traces["eval loss"].mode and len(traces["eval loss"].x) == len(ev)
    assert len(lr_fig.data[0].x) == 3 and len(grad_fig.data[0].x) == 3 and v.alert == ""
    assert lr_fig.layout.yaxis.exponentformat == "e"  # 2e-4, not plotly's default 200µ
    assert df.iloc[0]["best"].startswith("★ final (")  # the last step had the lowest (only) eval loss


def test_failed_run_shows_a_readable_error(tmp_path):
    from studio.runs import events
    from studio.ui.train import handlers

    d = tmp_path / "runs" / "20250101-000000-broken"
    d.mkdir(parents=True)
    RunConfig(name="broken").save(d / "config.yaml")
    events.write_status(d, "failed", error="Out of memory. Lower the batch size.", message="x")
    (d / "console.log").write_text("Traceback (most recent call last):\nImportError: boom\n")
    v = handlers.run_view(str(d), tmp_path / "runs")
    assert "Out of memory. Lower the batch size." in v.html and "studio-error" in v.html
    assert "ImportError: boom" in v.log  # no train.log: the console output shows instead
    assert not v.can_resume  # nothing to resume from
    assert handlers.stop_run(str(d)).startswith("The run is not training")


def test_start_without_data_or_with_bad_settings_says_why(tmp_path):
    from studio.ui import settings
    from studio.ui.train import handlers

    values = settings.preset_values("quick", "x", "demo")
    run_dir, msg = handlers.start_from_form(values, None, tmp_path)
    assert run_dir is None and "Data tab" in msg
    values[settings.KEYS.index(("train", "learning_rate"))] = 5.0
    run_dir, msg = handlers.start_from_form(values, {"path": str(SAMPLES / "pirate_qa.jsonl")}, tmp_path)
    assert run_dir is None and "Learning rate" in msg
    assert not any(tmp_path.iterdir())


# --- Chat tab -------------------------------------------------------------------------------------

@pytest.fixture
def shared(trained_run, tiny_model_dir):
    """The session's finished tiny run, as the Chat and Export tabs see it (its folder's parent is the root)."""
    return {"root": trained_run.parent, "run_dir": str(trained_run), "model": tiny_model_dir}


def test_base_pane_is_the_plain_base_model_and_tuned_differs(shared):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.ui.chat import handlers

    root, run_dir = shared["root"], shared["run_dir"]
    assert handlers.run_choices(root)[0][1] == run_dir
    ck = [v for _, v in handlers.checkpoint_choices(run_dir)]
    assert ck[0] == "adapter" and "checkpoint-4" in ck
    settings = handlers.settings_from("", 0.0, 0.9, 12, 0)  # greedy: one right answer to compare with
    last = None
    for last in handlers.respond("Why is the sky blue?", [], [], None, run_dir, "adapter", settings, root):
        pass
    base_hist, tuned_hist, held, status = last
    assert status.startswith("Done")
    assert [m["role"] for m in base_hist] == ["user", "assistant"] == [m["role"] for m in tuned_hist]
    base_text, tuned_text = base_hist[-1]["content"], tuned_hist[-1]["content"]

    # the same prompt through the plain base model, no peft anywhere
    tok = AutoTokenizer.from_pretrained(shared["model"])
    plain = AutoModelForCausalLM.from_pretrained(shared["model"], dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": "Why is the sky blue?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert base_text == expected
    assert tuned_text != base_text, "the adapter changed nothing"

    # a second turn reuses the browser's engine and keeps each pane's own history
    for last in handlers.respond("And at night?", base_hist, tuned_hist, held, run_dir, "adapter", settings, root):
        pass
    assert last[2]["engine"] is held["engine"]
    assert len(last[0]) == 4 and last[0][1]["content"] == base_text and last[1][1]["content"] == tuned_text


def test_chat_uses_one_thread_while_a_run_trains(shared, monkeypatch):
    from studio import chat
    from studio.ui.chat import handlers

    monkeypatch.setattr(chat, "threads_for_chat", lambda root=None: 1)
    engine, _ = handlers.engine_for(None, shared["run_dir"], "adapter", shared["root"])
    assert engine.threads == 1


def test_compare_on_heldout_rows_gives_a_table_losses_and_a_csv(shared):
    from studio.ui.chat import handlers, heldout

    settings = handlers.settings_from("", 0.0, 0.9, 8, 0)
    df, md, csv, _ = heldout.compare(None, shared["run_dir"], "adapter", 2, settings, shared["root"])
    assert list(df.columns)[:4] == ["prompt", "reference", "base", "tuned"] and len(df) == 2
    assert {"base F1", "tuned F1", "closer"} <= set(df.columns) and "closer on" in md
    assert "eval loss" in md and "perplexity" in md
    assert csv.is_file() and csv.suffix == ".csv" and "prompt" in csv.read_text(encoding="utf-8-sig")


# --- Export tab -----------------------------------------------------------------------------------

def test_export_zip_has_everything_and_a_safe_name(shared):
    from studio.ui.export import handlers

    root, run_dir = shared["root"], shared["run_dir"]
    assert handlers.run_choices(root)[0][1] == run_dir
    kept, download, listing = handlers.export_zip(run_dir)
    assert kept.is_file() and download.is_file() and download.name == kept.name
    assert Path(run_dir) not in download.parents  # the browser gets a copy; the runs folder is never served
    assert "-adapter-" in download.name and all(c.isascii() and (c.isalnum() or c in "-_.") for c in download.name)
    with zipfile.ZipFile(download) as zf:
        names = set(zf.namelist())
    assert {"adapter_model.safetensors", "adapter_config.json", "config.yaml", "metrics.jsonl", "loss_curve.png",
            "README.md", "tokenizer.json"} <= names
    assert "adapter_model.safetensors" in listing
    with pytest.raises(ValueError, match="Pick a run"):
        handlers.export_zip(None)


def test_export_merged_model_zip(shared):
    from safetensors.torch import load_file

    from studio.ui.export import handlers

    folder, mzip = handlers.export_merged_zip(shared["run_dir"])
    assert (folder / "model.safetensors").is_file() and "-merged-" in mzip.name
    with zipfile.ZipFile(mzip) as zf:
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(zf.namelist())
    assert not any("lora" in k for k in load_file(folder / "model.safetensors"))


# --- the app and its launcher ---------------------------------------------------------------------

def _contrast(fg: str, bg: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours."""
    def lum(hexcolor: str) -> float:
        rgb = [int(hexcolor.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
        r, g, b = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b
    hi, lo = sorted((lum(fg), lum(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_field_help_is_readable_text_by_wcag_aa():
    """Every field's help (gradio's block info) and the lead text: 4.5:1 at least on the page's white (issue 23)."""
    from studio.ui import app
    t = app.theme()
    assert _contrast("#9ca3af", "#ffffff") < 3  # the Soft theme's own gray, what the page had
    for colour in (t.block_info_text_color, t.body_text_color_subdued):
        assert _contrast(colour, "#ffffff") >= 4.5, colour

def test_app_builds_and_refuses_an_open_host_without_a_password(runs_dir, capsys):
    import gradio as gr

    from studio.ui import app, guard

    assert isinstance(app.build_app(runs_dir), gr.Blocks)
    assert guard.is_loopback("127.0.0.1") and guard.is_loopback("localhost") and guard.is_loopback("::1")
    assert not guard.is_loopback("0.0.0.0") and not guard.is_loopback("192.168.1.5") and \
        not guard.is_loopback("myhost")
    assert app.main(host="0.0.0.0", port=1, runs_dir=str(runs_dir)) == 2
    assert "--auth" in capsys.readouterr().err
    assert app.main(host="0.0.0.0", port=1, auth="nopassword", runs_dir=str(runs_dir)) == 2
    assert "user:password" in capsys.readouterr().err
    assert guard.parse_auth("ann:s3:cret") == ("ann", "s3:cret")
