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
    # in the dtype chat chose for this CPU (studio.models.precision: bf16 where the CPU has it natively)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=getattr(torch, engine.key[2])).eval()
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
    assert list(df.columns) == ["prompt", "reference", "base", "tuned", "base EM", "base F1", "tuned EM", "tuned F1",
                                "closer"]
    assert len(df) == 3 == stats["n"]
    assert df["reference"].tolist() == [m[-1]["content"] for m in held[:3]]
    assert df["prompt"].iloc[0] in held[0][-2]["content"]
    for k in ("base_loss", "tuned_loss", "base_ppl", "tuned_ppl"):
        assert math.isfinite(stats[k]), stats
    assert stats["tuned_loss"] < stats["base_loss"], stats
    assert stats["tuned_ppl"] == pytest.approx(math.exp(stats["tuned_loss"]))
    assert (stats["left"], stats["right"], stats["left_loss"]) == ("base", "tuned", stats["base_loss"])
    import pandas as pd
    back = pd.read_csv(save_csv(df, tmp_path / "cmp.csv"), encoding="utf-8-sig", keep_default_na=False)
    assert back["reference"].tolist() == df["reference"].tolist()


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("exports", "optimizer.pt"))
    return dst


def test_compare_heldout_scores_short_answers(engine, trained_run, tmp_path):
    """References written to be exactly the base's answer (row 1) and the tuned answer (row 2), and one of 70
    words (row 3): EM/F1 per side, the closer column and the summary follow from them."""
    from studio.chat import GenSettings, compare_heldout, normalize_answer
    from studio.data import read_jsonl

    s = GenSettings(temperature=0, max_new_tokens=6)
    run = _copy_run(trained_run, tmp_path / "run")
    rows = read_jsonl(run / "eval.jsonl")[:3]
    base0 = engine.generate(rows[0][:-1], tuned=False, settings=s).strip()
    tuned0 = engine.generate(rows[0][:-1], tuned=True, settings=s).strip()
    base1 = engine.generate(rows[1][:-1], tuned=False, settings=s).strip()
    tuned1 = engine.generate(rows[1][:-1], tuned=True, settings=s).strip()
    assert normalize_answer(base0) != normalize_answer(tuned0) and normalize_answer(base1) != normalize_answer(tuned1)
    long_ref = " ".join(["word"] * 70)
    for msgs, ref in zip(rows, (base0, tuned1, long_ref)):
        msgs[-1]["content"] = ref
    (run / "eval.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows), encoding="utf-8")

    df, stats = compare_heldout(engine, run, n=3, settings=s)
    assert df["base"].tolist()[:2] == [base0, base1] and df["tuned"].tolist()[:2] == [tuned0, tuned1]
    assert df["base EM"].iloc[0] == 1.0 and df["base F1"].iloc[0] == 1.0
    assert df["tuned EM"].iloc[1] == 1.0 and df["tuned F1"].iloc[1] == 1.0
    assert df["closer"].tolist() == ["base", "tuned", ""]
    assert all(pd_isna(df[c].iloc[2]) for c in ("base EM", "base F1", "tuned EM", "tuned F1"))
    assert stats["short"] == 2 and stats["wins"] == {"base": 1, "tuned": 1, "tie": 0}
    assert stats["left_em"] == pytest.approx((1.0 + df["base EM"].iloc[1]) / 2)
    assert stats["right_f1"] == pytest.approx((df["tuned F1"].iloc[0] + 1.0) / 2)
    assert stats["summary"] == ("tuned closer on 1 of 2 held-out prompts (base 1, tie 0); 1 with a reference over "
                                "64 words not scored.")


def pd_isna(x) -> bool:
    import pandas as pd
    return bool(pd.isna(x))


def test_two_adapters_on_one_base(engine, trained_run):
    """Checkpoint-4 against the final adapter: the left side is the other adapter (on), not the base; one base."""
    from studio import chat
    from studio.config import RunConfig
    from studio.data import read_jsonl

    s = chat.GenSettings(temperature=0, max_new_tokens=6)
    early = chat.ChatEngine.load(trained_run, "checkpoint-4", like=engine)
    assert early.key == engine.key and early.model is engine.model
    assert early.spec == (trained_run, "checkpoint-4") and engine.spec == (trained_run, "adapter")
    df, stats = chat.compare_heldout(engine, trained_run, n=2, settings=s, against=early)
    name = RunConfig.load(trained_run / "config.yaml").name  # the shared run has no run.json: its config's
    assert name == "my run/../é*?"
    left, right = f"{name} (checkpoint-4)", f"{name} (final)"
    assert (stats["left"], stats["right"]) == (left, right) and "base_loss" not in stats
    assert list(df.columns)[2:4] == [left, right] and df.columns[-1] == "closer"
    held = read_jsonl(trained_run / "eval.jsonl")[:2]
    assert df[left].tolist() == [early.generate(m[:-1], tuned=True, settings=s).strip() for m in held]
    assert df[right].tolist() == [engine.generate(m[:-1], tuned=True, settings=s).strip() for m in held]
    early_sum, early_n = early.loss(held, tuned=True)
    assert stats["left_loss"] == pytest.approx(early_sum / early_n)
    base_df, base_stats = chat.compare_heldout(engine, trained_run, n=2, settings=s)
    assert stats["right_loss"] == pytest.approx(base_stats["tuned_loss"])
    assert stats["left_loss"] != pytest.approx(base_stats["base_loss"])  # the left side is not the base
    # the same adapter on both sides still gets two column names
    _, same = chat.compare_heldout(engine, trained_run, n=1, settings=s, against=engine)
    assert (same["left"], same["right"]) == (f"{right} (left)", f"{right} (right)")
    assert same["left_loss"] == pytest.approx(same["right_loss"])
    with pytest.raises(ValueError, match="'base' or another chat engine"):
        chat.compare_heldout(engine, trained_run, n=1, settings=s, against="checkpoint-4")


def test_an_adapter_of_another_base_is_refused_before_loading(engine, trained_run, demo_model_dir, tmp_path):
    from studio import chat

    other = _copy_run(trained_run, tmp_path / "other")
    _set_source(other, demo_model_dir)
    assert chat.base_path(other) == str(demo_model_dir.resolve()) != chat.base_path(trained_run) == engine.key[0]
    before = chat.loaded_base()
    with pytest.raises(ValueError, match="another base model .* only adapters of the same base"):
        chat.ChatEngine.load(other, like=engine)
    assert chat.loaded_base() == before and engine.model is not None


def _set_source(run: Path, model_dir: Path) -> None:
    """Point a copied run (its config and its final adapter's copy of it) at another base model."""
    from studio.config import RunConfig
    for f in (run / "config.yaml", run / "adapter" / "studio_config.yaml"):
        cfg = RunConfig.load(f)
        cfg.replace(model={"source": str(model_dir)}).save(f)


def test_threads_for_chat_and_thread_setting(engine, tmp_path):
    """One thread while a run trains, torch's default otherwise; the engine restores torch's setting."""
    import torch

    from studio import chat
    from studio.runs import events

    root = tmp_path / "runs"
    (root / "busy").mkdir(parents=True)
    assert chat.threads_for_chat(root) == 0
    # a live process that looks like a trainer ("studio" in its command line), started and ended here
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "studio-fake-trainer"])
    try:
        events.write_status(root / "busy", "running", pid=fake.pid)
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
