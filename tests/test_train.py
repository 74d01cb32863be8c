"""The trainer on a tiny random Llama with the real SmolLM2 tokenizer: through the real CLI subprocess,
stop/resume, failures as readable statuses, and what LoRA training changes (and doesn't)."""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from studio import runs
from studio.runs import events
from studio.runs import ADAPTER, CHECKPOINTS, latest_checkpoint as last_checkpoint
from tests.helpers import studio_cli


def _wait(pred, timeout=240, every=0.3):
    t = time.time()
    while time.time() - t < timeout:
        if pred():
            return True
        time.sleep(every)
    return False


@pytest.mark.train
def test_cli_run_loss_goes_down_and_writes_the_run_folder(tiny_config, tmp_path):
    cfg = tiny_config.replace(train={"max_steps": 12, "eval_steps": 6, "save_steps": 6})
    cfg_path = cfg.save(tmp_path / "cfg.yaml")
    out = tmp_path / "run"
    res = studio_cli("train", cfg_path, "--output", out, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    st = events.read_status(out)
    assert st["state"] == "finished" and st["step"] == 12 and isinstance(st["eval_loss"], float)
    df = events.read_metrics(out)
    train = df[df.kind == "train"].sort_values("step")
    assert list(train.step) == list(range(1, 13))
    assert train.loss.iloc[-3:].mean() < train.loss.iloc[:3].mean() - 0.5, train.loss.tolist()
    assert (train.tokens_per_s > 0).all() and train.tokens_seen.is_monotonic_increasing
    assert (train.trained_tokens < train.tokens_seen).all()  # loss on assistant tokens only
    assert train.eta_s.iloc[-1] == 0
    evals = df[df.kind == "eval"]
    assert set(evals.step) >= {6, 12} and evals.eval_loss.notna().all()
    for name in ("config.yaml", "dataset.jsonl", "eval.jsonl", "train.log", f"{ADAPTER}/adapter_model.safetensors",
                 f"{ADAPTER}/adapter_config.json", f"{ADAPTER}/tokenizer.json", f"{ADAPTER}/studio_config.yaml"):
        assert (out / name).is_file(), name
    assert last_checkpoint(out).name == "checkpoint-12"
    log = (out / "train.log").read_text()
    assert "4-bit NF4" in log
    # compute dtype auto on the CPU: the measured probe's figures and its choice, and the run computes in it
    chosen = re.search(r"CPU precision \((?:cached )?probe, K=64, 1 threads\): bf16 GEMM \d+ GFLOP/s, fp32 \d+ "
                       r"GFLOP/s \([\d.]+x; bf16 is used from [\d.]+x\) -> (float32|bfloat16)", log)
    assert chosen and f"compute dtype {chosen.group(1)}" in log


@pytest.mark.train
def test_lora_weights_change_and_base_weights_do_not(tiny_config, tmp_path):
    import torch

    from studio.train.recipe import build_trainer
    trainer, _, _ = build_trainer(tiny_config.replace(train={"max_steps": 4}), tmp_path)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert any("Linear4bit" in type(m).__name__ for m in model.modules()), "the base should be 4-bit (QLoRA)"
    params = dict(model.named_parameters())
    changed = [n for n in lora if not torch.equal(before[n], params[n].detach())]
    assert len(changed) == len(lora), set(lora) - set(changed)
    assert all(torch.equal(before[n], params[n].detach()) for n in base)
    assert all(p.requires_grad == ("lora_" in n) for n, p in params.items())


@pytest.mark.train
def test_the_same_config_starts_from_the_same_adapter_and_another_seed_does_not(tiny_config, tmp_path):
    """A new adapter's random init (LoRA A) comes from train.seed, whatever drew random numbers before it: two
    builds in one process (the first moved torch's generator on) start equal, so the same config trains the same
    adapter; another seed starts elsewhere."""
    import torch

    from studio.train.recipe import build_trainer

    def lora(cfg, where):
        trainer, _, _ = build_trainer(cfg, tmp_path / where)
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}

    first = lora(tiny_config, "a")
    torch.rand(1000)  # anything else drawing from the generator in between
    again, other = lora(tiny_config, "b"), lora(tiny_config.replace(train={"seed": 1}), "c")
    assert first and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first)


@pytest.mark.train
def test_stop_then_resume_continues_step_count(tiny_config, runs_dir):
    cfg = tiny_config.replace(train={"max_steps": 60, "save_steps": 1000, "eval_steps": 0, "eval_fraction": 0.0})
    run_dir = runs.create_run(cfg, runs_dir)
    proc = runs.start(run_dir, root=runs_dir)
    assert _wait(lambda: (events.read_status(run_dir).get("step") or 0) >= 3), (run_dir / "console.log").read_text()
    # one run at a time: a second start is refused with a sentence
    other = runs.create_run(cfg, runs_dir)
    with pytest.raises(runs.RunError, match="one run at a time"):
        runs.start(other, root=runs_dir)
    st = runs.stop(run_dir, wait=120)
    proc.wait(timeout=60)
    assert st["state"] == "stopped", st
    stopped_at = st["step"]
    assert 3 <= stopped_at < 60
    assert last_checkpoint(run_dir).name == f"checkpoint-{stopped_at}"  # saved on stop
    assert (run_dir / ADAPTER / "adapter_model.safetensors").is_file()
    proc = runs.resume(run_dir, runs_dir)
    assert proc.wait(timeout=300) == 0, (run_dir / "console.log").read_text()[-3000:]
    assert runs.status(run_dir)["state"] == "finished"
    steps = list(events.read_metrics(run_dir).query("kind == 'train'").step)
    assert steps == list(range(1, 61)), steps  # continues, no gap, no repeat
    logged = events.read_metrics_events(run_dir)
    assert any(e["kind"] == "resume" and e["step"] == stopped_at for e in logged)
    listed = {r["id"]: r for r in runs.list_runs(runs_dir)}
    assert listed[run_dir.name]["state"] == "finished" and listed[run_dir.name]["adapter"]
    assert listed[other.name]["state"] == "queued"
    runs.delete_run(other)
    assert not other.exists() and run_dir.exists()


@pytest.mark.train
def test_killed_trainer_is_reported_failed_and_can_resume(tiny_config, runs_dir):
    cfg = tiny_config.replace(train={"max_steps": 200, "save_steps": 2, "eval_fraction": 0.0})
    run_dir = runs.create_run(cfg, runs_dir)
    proc = runs.start(run_dir, root=runs_dir)
    assert _wait(lambda: last_checkpoint(run_dir) is not None and (events.read_status(run_dir).get("step") or 0) >= 3)
    with pytest.raises(runs.RunError, match="stop it"):
        runs.delete_run(run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    st = runs.status(run_dir)
    assert st["state"] == "failed" and "ended unexpectedly" in st["error"]
    assert runs.active_run(runs_dir) is None  # a dead trainer does not block the next start
    ckpt = int(last_checkpoint(run_dir).name.split("-")[1])
    proc = subprocess.Popen(runs.train_command(run_dir, resume=True) + ["--max-steps", str(ckpt + 2)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=300) == 0
    steps = list(events.read_metrics(run_dir).query("kind == 'train'").step)
    assert steps == sorted(set(steps)) and steps[-1] == ckpt + 2


@pytest.mark.train
def test_bad_data_fails_with_a_readable_message(tiny_config, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer_text\n,\n")
    cfg_path = tiny_config.replace(data={"path": str(bad)}).save(tmp_path / "cfg.yaml")
    before = bad.read_bytes()
    res = studio_cli("train", cfg_path, "--output", tmp_path / "run", timeout=300)
    assert res.returncode == 1
    st = events.read_status(tmp_path / "run")
    assert st["state"] == "failed" and "bad.csv" in st["error"]
    assert "Traceback" not in res.stderr
    assert bad.read_bytes() == before


@pytest.mark.train
def test_missing_model_fails_with_a_readable_message(tiny_config, tmp_path):
    cfg_path = tiny_config.replace(model={"source": str(tmp_path / "nope")}).save(tmp_path / "cfg.yaml")
    res = studio_cli("train", cfg_path, "--output", tmp_path / "run", timeout=300)
    st = events.read_status(tmp_path / "run")
    assert res.returncode == 1 and st["state"] == "failed"
    assert "neither 'demo', an existing folder, nor a hub id" in st["error"]
    cfg_path = tiny_config.replace(model={"source": "someorg/not-cached-model"}).save(tmp_path / "cfg2.yaml")
    t = time.time()
    res = studio_cli("train", cfg_path, "--output", tmp_path / "run2", timeout=300)
    assert time.time() - t < 60  # offline: a clear message, no long hang
    assert "not in the local Hugging Face cache" in events.read_status(tmp_path / "run2")["error"]


@pytest.mark.train
def test_nan_loss_ends_failed_with_advice(tiny_config, tmp_path, monkeypatch):
    from studio.train import lifecycle
    real = lifecycle.build_trainer

    def poisoned(*a, **kw):
        trainer, tok, rep = real(*a, **kw)
        orig = type(trainer).compute_loss

        def compute_loss(self, model, inputs, *args, **kwargs):
            return orig(self, model, inputs, *args, **kwargs) * float("nan")
        monkeypatch.setattr(type(trainer), "compute_loss", compute_loss)
        return trainer, tok, rep

    monkeypatch.setattr(lifecycle, "build_trainer", poisoned)
    prev = signal.getsignal(signal.SIGINT)
    code = lifecycle.run(tiny_config.replace(train={"max_steps": 5}), tmp_path / "run")
    assert signal.getsignal(signal.SIGINT) is prev  # the in-process run gives the handlers back
    st = events.read_status(tmp_path / "run")
    assert code == 1 and st["state"] == "failed"
    assert "NaN" in st["error"] and "learning rate" in st["error"]


def test_out_of_memory_is_explained():
    from studio.train.failure import explain

    class OutOfMemoryError(RuntimeError):
        pass
    msg = explain(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert "Out of memory" in msg and "batch size" in msg and "gradient checkpointing" in msg


def test_packing_keeps_attention_inside_each_example(tiny_model_dir):
    """Padding-free batches (rows concatenated, as the studio trains them) must give the same logits per
    example as one example at a time: attention stays inside each example."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from studio.train.speed import packed_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    packed_attention(model)
    rows = [{"input_ids": list(range(100, 100 + n)), "labels": list(range(100, 100 + n))} for n in (7, 12, 5)]
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    packed.pop("labels")
    with torch.no_grad():
        logits = model(**packed).logits[0]
        start = 0
        for r in rows:
            n = len(r["input_ids"])
            alone = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            assert torch.allclose(logits[start:start + n], alone, atol=1e-4)
            start += n


def test_cli_runs_commands(tiny_config, runs_dir):
    run_dir = runs.create_run(tiny_config, runs_dir)
    out = studio_cli("runs", "list")
    assert run_dir.name in out.stdout and "queued" in out.stdout
    out = studio_cli("runs", "status", run_dir.name)
    assert json.loads(out.stdout)["state"] == "queued"
    out = studio_cli("runs", "status", "no-such-run")
    assert out.returncode == 2 and "No run 'no-such-run'" in out.stderr
    # the run folder is self-contained: its own copy of the data, the config pointing at it
    cfg = (run_dir / "config.yaml").read_text()
    assert str(run_dir / "dataset.jsonl") in cfg
    assert not (run_dir / CHECKPOINTS).exists()
