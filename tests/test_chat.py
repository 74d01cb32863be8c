"""studio.chat: Base is exactly the plain base model, Tuned is the adapter, one base in memory, streaming, held-out."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

GREEDY = dict(temperature=0.0, max_new_tokens=12)
QUESTION = [{"role": "user", "content": "How do I boil an egg?"}]



@pytest.fixture(scope="module")
def engine(trained_run):
    from studio.chat import ChatEngine
    return ChatEngine.load(trained_run)


def test_base_pane_is_the_plain_base_model(engine, tiny_model_dir):
    """Base = adapter disabled must be the untouched base: same logits, same greedy tokens as a fresh load
    without peft (catches generating 'base' on a model the adapter was injected into)."""
    import torch
    from transformers import AutoModelForCausalLM

    from studio.chat import GenSettings

    s = GenSettings(**GREEDY)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = engine.encode(QUESTION, s)
    with torch.inference_mode():
        want = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=s.max_new_tokens, eos_token_id=engine.tokenizer.eos_token_id,
                              pad_token_id=engine.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        plain_logits = plain(input_ids=ids).logits
        model = engine.model
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
        tuned_logits = model(input_ids=ids).logits
    assert engine.generate_ids(QUESTION, tuned=False, settings=s) == want
    assert torch.equal(base_logits, plain_logits)
    assert (tuned_logits - plain_logits).abs().max() > 1e-3  # the adapter is really on outside the context


def test_tuned_differs_from_base_and_is_deterministic(engine):
    from studio.chat import GenSettings

    s = GenSettings(**GREEDY)
    tuned = engine.generate_ids(QUESTION, tuned=True, settings=s)
    base = engine.generate_ids(QUESTION, tuned=False, settings=s)
    assert tuned != base
    assert engine.generate_ids(QUESTION, tuned=True, settings=s) == tuned
    # sampling: the same seed gives the same draw, so reruns (and both panes) are comparable
    hot = GenSettings(temperature=1.0, top_p=0.95, max_new_tokens=8, seed=7)
    assert engine.generate(QUESTION, tuned=True, settings=hot) == engine.generate(QUESTION, tuned=True, settings=hot)


def test_stream_yields_growing_text_ending_with_the_answer(engine):
    from studio.chat import GenSettings

    for s in (GenSettings(**GREEDY), GenSettings(temperature=0.8, max_new_tokens=10, seed=3)):
        parts = list(engine.stream(QUESTION, tuned=True, settings=s))
        assert parts, "stream yielded nothing"
        for a, b in zip(parts, parts[1:]):
            assert b.startswith(a) and len(b) > len(a)
        assert parts[-1] == engine.generate(QUESTION, tuned=True, settings=s)
    # a stream abandoned half-way releases the model for the next request
    it = engine.stream(QUESTION, tuned=False, settings=GenSettings(**GREEDY))
    next(it)
    it.close()
    assert engine.generate(QUESTION, tuned=False, settings=GenSettings(**GREEDY)) is not None


def test_checkpoints_share_one_base(engine, trained_run):
    """Loading another checkpoint of the same base only adds an adapter; each handle keeps its own."""
    from studio import chat, runs

    s = chat.GenSettings(**GREEDY)
    assert runs.adapter_choices(trained_run) == ["adapter", "checkpoint-8", "checkpoint-4"]
    final_before = engine.generate_ids(QUESTION, tuned=True, settings=s)
    base_before = engine.generate_ids(QUESTION, tuned=False, settings=s)
    early = chat.ChatEngine.load(trained_run, checkpoint="checkpoint-4")
    assert early.model is engine.model and early.adapter_name != engine.adapter_name
    # the final adapter dir and checkpoint-8 hold the same weights but are separate adapters
    again = chat.ChatEngine.load(trained_run / "adapter")
    assert again.adapter_name == engine.adapter_name and again.model is engine.model
    early_ids = early.generate_ids(QUESTION, tuned=True, settings=s)
    assert engine.generate_ids(QUESTION, tuned=True, settings=s) == final_before
    assert early.generate_ids(QUESTION, tuned=False, settings=s) == base_before
    assert early_ids != base_before
    assert chat.loaded_base()[0] == str(Path(json.loads(
        (trained_run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]).resolve())


def test_load_errors_are_clear(trained_run, tmp_path):
    from studio.chat import ChatEngine, GenSettings

    with pytest.raises(ValueError, match=r"no 'checkpoint-99' adapter yet \(available: adapter, checkpoint-8"):
        ChatEngine.load(trained_run, checkpoint="checkpoint-99")
    with pytest.raises(ValueError, match="not known"):
        ChatEngine.load(trained_run, checkpoint="latest")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    with pytest.raises(ValueError, match="finish or stop the run first"):
        ChatEngine.load(fresh)
    with pytest.raises(ValueError, match="neither a run folder"):
        ChatEngine.load(tmp_path)
    with pytest.raises(ValueError, match="Temperature"):
        GenSettings(temperature=-1)


def test_compare_heldout(engine, trained_run, tmp_path):
    from studio.chat import GenSettings, compare_heldout, save_csv
    from studio.data import read_jsonl

    held = read_jsonl(trained_run / "eval.jsonl")
    df, stats = compare_heldout(engine, trained_run, n=3, settings=GenSettings(temperature=0, max_new_tokens=6))
    assert list(df.columns) == ["prompt", "reference", "base", "tuned"]
    assert len(df) == 3 == stats["n"]
    assert df["reference"].tolist() == [m[-1]["content"] for m in held[:3]]
    assert df["prompt"].iloc[0] in held[0][-2]["content"]
    for k in ("base_loss", "tuned_loss", "base_ppl", "tuned_ppl"):
        assert math.isfinite(stats[k]), stats
    assert stats["tuned_loss"] < stats["base_loss"], stats
    assert stats["tuned_ppl"] == pytest.approx(math.exp(stats["tuned_loss"]))
    import pandas as pd
    back = pd.read_csv(save_csv(df, tmp_path / "cmp.csv"), encoding="utf-8-sig", keep_default_na=False)
    assert back["reference"].tolist() == df["reference"].tolist()


def test_threads_for_chat_and_thread_setting(engine, tmp_path):
    """One thread while a run trains, torch's default otherwise; the engine restores torch's setting."""
    import torch

    from studio import chat, metrics

    root = tmp_path / "runs"
    (root / "busy").mkdir(parents=True)
    assert chat.threads_for_chat(root) == 0
    # a live process that looks like a trainer ("studio" in its command line), started and ended here
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "studio-fake-trainer"])
    try:
        metrics.write_status(root / "busy", "running", pid=fake.pid)
        assert chat.threads_for_chat(root) == 1
    finally:
        fake.kill()
        fake.wait()
    time.sleep(0.1)
    assert chat.threads_for_chat(root) == 0
    before = torch.get_num_threads()
    engine.threads = 1
    try:
        assert engine.generate(QUESTION, tuned=True, settings=chat.GenSettings(**GREEDY))
    finally:
        engine.threads = None
    assert torch.get_num_threads() == before
