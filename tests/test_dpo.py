"""The preference stage (train.stage: dpo): a run that starts from an SFT run's adapter, uses that adapter frozen as
its reference, and trains on pairs of a better and a worse answer. Tiny model here; the demo model (slow) below."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, SAMPLE_JSONL, studio_cli

SIGN_OFF = " Savvy?"  # the trait the tiny model's chosen answers share and the rejected ones lack
GREETING = "Ahoy! "  # the demo model's: an opening, which greedy decoding shows at once


def _pairs(n: int, start: int = 0) -> list[dict]:
    """Preference pairs from the sample data: chosen = the answer + a sign-off, rejected = the answer alone."""
    rows = [json.loads(line) for line in SAMPLE_JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for r in rows[start:start + n]:
        msgs = r["messages"] if isinstance(r, dict) and "messages" in r else r
        user = next(m["content"] for m in msgs if m["role"] == "user")
        answer = next(m["content"] for m in msgs if m["role"] == "assistant")
        out.append({"prompt": [{"role": "user", "content": user}],
                    "chosen": [{"role": "assistant", "content": answer + SIGN_OFF}],
                    "rejected": [{"role": "assistant", "content": answer}]})
    return out


def _write_pairs(path: Path, pairs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return path


def _dpo_cfg(start: Path, data: Path, **train):
    from studio.config import RunConfig
    base = RunConfig.load(start / "config.yaml")
    return base.replace(name="dpo", data={"path": str(data), "format": "auto", "columns": {}},
                        train={"stage": "dpo", "start_from": str(start), "learning_rate": 1e-3, "max_steps": 12,
                               "batch_size": 2, "grad_accum": 1, "eval_fraction": 0.0, "eval_steps": 0,
                               "save_steps": 6, "packing": False, "logging_steps": 1, "dpo_beta": 0.1,
                               "early_stopping_patience": 0, **train})


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, trained_run) -> Path:
    """A copy of the shared tiny SFT run (8 steps), which the DPO runs start from."""
    return Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("sft") / "run"))


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, sft_run):
    """A DPO run through the CLI subprocess, as the UI starts it: (run folder, process result)."""
    d = tmp_path_factory.mktemp("dpo")
    cfg = _dpo_cfg(sft_run, _write_pairs(d / "pairs.jsonl", _pairs(16)))
    cfg.save(d / "dpo.yaml")
    t = time.perf_counter()
    res = studio_cli("train", d / "dpo.yaml", "--output", d / "run", timeout=600, cwd=ROOT)
    print(f"tiny DPO run, 12 steps: {time.perf_counter() - t:.0f} s")
    return d / "run", res


def test_dpo_run_raises_margin_and_accuracy(dpo_run):
    run, res = dpo_run
    assert res.returncode == 0, res.stderr[-4000:]
    st = json.loads((run / "status.json").read_text(encoding="utf-8"))
    assert st["state"] == "finished" and st["step"] == 12, st
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "reference: the starting adapter, frozen" in log and "Continuing the adapter" in log
    train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in train if e.get("kind") == "train"]
    margins = [e["reward_margin"] for e in train]
    accuracy = [e["reward_accuracy"] for e in train]
    print("margins", [round(m, 3) for m in margins], "\naccuracy", accuracy)
    assert abs(margins[0]) < 1e-3  # step 1: the policy is the reference, so every reward is 0
    assert sum(margins[-3:]) / 3 > 0.05, margins  # it learned to prefer the chosen answers
    assert sum(accuracy[-3:]) / 3 >= 0.8 > accuracy[0], accuracy
    # the run folder keeps the pairs and, for the other tabs, prompt + chosen conversations
    assert len((run / "pairs.jsonl").read_text().splitlines()) == 16
    first = json.loads((run / "dataset.jsonl").read_text().splitlines()[0])["messages"]
    assert first[-1]["role"] == "assistant" and first[-1]["content"].endswith(SIGN_OFF)


def test_dpo_adapter_is_one_adapter_that_moved_from_sft(dpo_run, sft_run, tiny_model_dir):
    """The saved adapter is the SFT adapter plus the preference update, one adapter (no "ref" copy), reloadable
    with peft on the base, whose weights are unchanged."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run, res = dpo_run
    assert res.returncode == 0, res.stderr[-3000:]
    adapter = run / "adapter"
    assert not (adapter / "ref").exists() and not list(adapter.rglob("ref/*"))
    dpo_w, sft_w = (load_file(str(a / "adapter_model.safetensors")) for a in (adapter, sft_run / "adapter"))
    assert set(dpo_w) == set(sft_w)
    assert any(not torch.equal(dpo_w[k], sft_w[k]) for k in dpo_w)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, str(adapter))
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == 6
    after = model.get_base_model().state_dict()
    for k, v in before.items():
        assert torch.equal(v, after.get(k, after.get(k.replace(".weight", ".base_layer.weight")))), k


def test_reference_is_the_sft_adapter_before_the_first_step(sft_run, tmp_path, tiny_model_dir):
    """TRL's frozen "ref" adapter gives the SFT model's logits exactly, and the base is loaded once."""
    import torch
    from peft import PeftModel
    from trl.trainer.utils import use_adapter

    from studio.models import load_model
    from studio.train.recipe import build_trainer

    cfg = _dpo_cfg(sft_run, _write_pairs(tmp_path / "pairs.jsonl", _pairs(6)))
    cfg = cfg.replace(model={"compute_dtype": "float32"})  # compared exactly with a plain load below
    trainer, tok, _ = build_trainer(cfg, tmp_path / "run")
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    ids = torch.tensor([tok("Arr, where be the treasure?")["input_ids"]])
    model.eval()
    with torch.inference_mode():
        policy = model(input_ids=ids).logits
        with use_adapter(model, adapter_name="ref"):
            ref = model(input_ids=ids).logits
    sft = PeftModel.from_pretrained(load_model(tiny_model_dir, cfg.model, "cpu"), str(sft_run / "adapter")).eval()
    with torch.inference_mode():
        expected = sft(input_ids=ids).logits
    assert torch.allclose(ref, expected, atol=1e-5), (ref - expected).abs().max()
    assert torch.allclose(policy, expected, atol=1e-5)
    # one 4-bit base: the two adapters share every base layer
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert set(layer.lora_A) == {"default", "ref"} and not layer.lora_A["ref"].weight.requires_grad


def test_dpo_needs_preference_pairs(sft_run, tmp_path):
    """An SFT file as a dpo run's data, or a single pair, is refused with a sentence, in the status and the CLI."""
    cfg = _dpo_cfg(sft_run, SAMPLE_JSONL)
    cfg.save(tmp_path / "bad.yaml")
    res = studio_cli("train", tmp_path / "bad.yaml", "--output", tmp_path / "run", timeout=300, cwd=ROOT)
    assert res.returncode != 0 and "Traceback" not in res.stderr.split("Run folder")[-1]
    st = json.loads((tmp_path / "run" / "status.json").read_text())
    assert st["state"] == "failed" and "chosen" in st["error"] and "rejected" in st["error"], st


# --- KTO: single answers rated good or bad ------------------------------------------------------------

def _ratings(n: int) -> list[dict]:
    """The Chat tab's feedback.jsonl shape: 👍 on the sign-off answers, 👎 on the plain ones, alternating."""
    out = []
    for i, p in enumerate(_pairs(n)):
        good = i % 2 == 0
        out.append({"prompt": p["prompt"], "completion": p["chosen" if good else "rejected"], "label": good,
                    "model": "x", "time": 0.0})
    return out


def test_kto_run_from_rated_answers(sft_run, tmp_path):
    """stage kto on rated answers through the CLI: TRL's KTOTrainer with the SFT adapter as the frozen reference;
    the reward of the good answers rises above the bad ones'."""
    data = tmp_path / "feedback.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _ratings(16)), encoding="utf-8")
    cfg = _dpo_cfg(sft_run, data, stage="kto", max_steps=10, batch_size=4)
    cfg.save(tmp_path / "kto.yaml")
    res = studio_cli("train", tmp_path / "kto.yaml", "--output", tmp_path / "run", timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    run = tmp_path / "run"
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "KTO: beta 0.1" in log and "reference: the starting adapter, frozen" in log
    assert "16 used: 8 good, 8 bad" in log
    train = [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e.get("kind") == "train"]
    margins = [e.get("reward_margin") for e in train]
    print("KTO margins", margins)
    assert all(isinstance(m, float) for m in margins), train[-1]
    assert sum(margins[-3:]) / 3 > max(0.05, margins[0] + 0.05), margins
    assert len((run / "unpaired.jsonl").read_text().splitlines()) == 16
    assert not (run / "adapter" / "ref").exists()


def test_kto_config_needs_ratings_of_both_kinds(sft_run, tmp_path):
    from studio import runs
    from studio.runs import judgements

    run = Path(shutil.copytree(sft_run, tmp_path / "run", ignore=shutil.ignore_patterns("exports")))
    msgs = [{"role": "user", "content": "Why is the sky blue?"}]
    for _ in range(4):
        judgements.append_feedback(run, msgs, "Arr, the sea reflects it.", "run (final)", True)
    with pytest.raises(runs.RunError, match=r"4 rated answer\(s\).*4 👍, 0 👎.*some of each"):
        runs.kto_config(run)
    judgements.append_feedback(run, msgs, "Blue.", "run (final)", False)
    cfg = runs.kto_config(run)
    assert cfg.train.stage == "kto" and cfg.train.start_from == str(run.resolve()) and cfg.train.batch_size == 2
    assert cfg.data.path == str(run / runs.FEEDBACK)


# --- the demo model (slow) -----------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_dpo_teaches_the_preferred_trait(demo_run, tmp_path):
    """SFT on the sample data (the shared demo run), then DPO on 40 made-up pairs whose chosen answers open with a
    greeting the rejected ones lack: on 20 held-out prompts (none in the pairs) the DPO adapter's greedy answers
    carry it more often than the SFT adapter's. Measured here: SFT 0/20, DPO 20/20 (16 steps, ~40 s on 2 cores;
    a sign-off at the end of the answer did not transfer in 20 steps: DPO lowered the end-of-text token instead)."""
    from studio.chat import ChatEngine
    from studio.config import GenSettings
    from studio.data import read_jsonl

    held = read_jsonl(demo_run / "eval.jsonl")[:20]
    held_users = {next(t["content"] for t in m if t["role"] == "user") for m in held}
    pairs = [{**p, "chosen": [{"role": "assistant", "content": GREETING + p["rejected"][0]["content"]}]}
             for p in _pairs(260) if p["prompt"][0]["content"] not in held_users][:40]
    cfg = _dpo_cfg(demo_run, _write_pairs(tmp_path / "pairs.jsonl", pairs), learning_rate=1e-3, max_steps=16,
                   save_steps=100)
    cfg.save(tmp_path / "dpo.yaml")
    t = time.perf_counter()
    res = studio_cli("train", tmp_path / "dpo.yaml", "--output", tmp_path / "run", timeout=1200, cwd=ROOT)
    dt = time.perf_counter() - t
    assert res.returncode == 0, res.stderr[-4000:]
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e.get("kind") == "train"]
    summary = next(e for e in events if e.get("kind") == "summary")
    print(f"demo DPO: 16 steps in {dt:.0f} s ({summary['wall_s'] / 16:.2f} s/step, peak {summary['peak_memory_gb']} "
          f"GB); margins {[round(e['reward_margin'], 2) for e in train]}")
    assert train[-1]["reward_margin"] > 1.0 and train[-1]["reward_accuracy"] >= 0.9, train[-1]

    settings = GenSettings(temperature=0.0, max_new_tokens=40)
    sft = ChatEngine.load(demo_run)
    dpo = ChatEngine.load(tmp_path / "run", like=sft)
    prompts = [[t for t in m if t["role"] != "assistant"] for m in held]
    sft_answers = [sft.generate(p, settings=settings) for p in prompts]
    dpo_answers = [dpo.generate(p, settings=settings) for p in prompts]
    trait = GREETING.strip()
    n_sft, n_dpo = sum(a.startswith(trait) for a in sft_answers), sum(a.startswith(trait) for a in dpo_answers)
    print(f"held-out answers opening with '{trait}': SFT {n_sft}/20, DPO {n_dpo}/20")
    for a, b in list(zip(sft_answers, dpo_answers))[:5]:
        print(f"  SFT: {a!r}\n  DPO: {b!r}")
    assert n_dpo > n_sft and n_dpo >= 10, (n_sft, n_dpo)
    assert sum("Arr" in a for a in dpo_answers) >= 15  # still the SFT run's style: the preference added to it


def test_rated_answers_are_refused_as_sft_data(tmp_path, runs_dir):
    """A 👍/👎 file has prompt and completion columns, which SFT would read as examples, bad answers included."""
    from studio import data, runs
    from studio.config import preset

    f = tmp_path / "feedback.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _ratings(4)), encoding="utf-8")
    assert data.is_rated_file(f) and not data.is_rated_file(SAMPLE_JSONL)
    with pytest.raises(data.DataError, match="rated good or bad.*kto"):
        runs.create_run(preset("quick", data={"path": str(f)}), runs_dir)
    assert list(runs_dir.iterdir()) == []
    report = data.read_rated_answers(f)
    assert report.n_used == 4 and report.n_desirable == 2 and "2 good, 2 bad" in report.summary()
    bad = tmp_path / "bad.jsonl"
    rows = _ratings(3)
    rows[1]["label"] = "maybe"
    rows[2]["completion"] = [{"role": "assistant", "content": ""}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = data.read_rated_answers(bad)
    assert report.n_used == 1 and report.n_skipped == 2
    assert [(i.row, i.column) for i in report.issues] == [(2, "label"), (3, "completion")], report.issues
    assert "'maybe'" in report.issues[0].problem and "true" in report.issues[0].fix
