"""studio.memory: the estimate moves the right way with each setting, and (slow) it matches a real run."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from studio.config import RunConfig, preset
from studio.memory import DEMO_SHAPE, estimate, param_counts
from tests.helpers import SAMPLE_JSONL

LLAMA_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
             "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
             "torch_dtype": "bfloat16"}


def est(device="cpu", mc=DEMO_SHAPE, rows=256, **sections):
    # compute dtype pinned unless a test sets it: with auto, the CPU probe measures again on each call while the
    # machine is busy, and two calls of one comparison may then pick bf16 and fp32 (seen under a loaded CI box)
    cfg = RunConfig().replace(model={"compute_dtype": "float32"})
    return estimate(cfg.replace(**sections) if sections else cfg, device, model_config=mc, row_tokens=rows)


def test_parts_add_up_and_summary_is_one_line():
    e = est()
    assert e.device == "cpu"
    assert abs(sum(e.breakdown.values()) - e.total_gb) < 0.01
    assert {"weights", "lora", "optimizer", "activations"} <= set(e.breakdown)
    line = e.summary()
    assert "\n" not in line and "GB" in line and "cpu" in line


@pytest.mark.parametrize("section,field,lo,hi", [
    ("train", "batch_size", 2, 8), ("train", "max_length", 128, 1024), ("lora", "r", 8, 64)])
def test_monotonic(section, field, lo, hi):
    rows = 4096  # longer than any max_length here, so max_length binds
    small = est(rows=rows, **{section: {field: lo}})
    big = est(rows=rows, **{section: {field: hi}})
    assert big.total_gb > small.total_gb
    key = "lora" if field == "r" else "activations"
    assert big.breakdown[key] > small.breakdown[key]


def test_checkpointing_lowers_activations():
    off = est(train={"gradient_checkpointing": False, "batch_size": 8})
    on = est(train={"gradient_checkpointing": True, "batch_size": 8})
    assert on.breakdown["activations"] < 0.5 * off.breakdown["activations"]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_4bit_weights_about_4x_smaller(device):
    nf4 = est(device, mc=LLAMA_70B, model={"quantization": "nf4", "compute_dtype": "bfloat16"})
    full = est(device, mc=LLAMA_70B, model={"quantization": "none", "compute_dtype": "bfloat16"})
    ratio = full.breakdown["weights"] / nf4.breakdown["weights"]
    # 16 bits -> ~4.1 bits for the linear layers; embeddings and LM head (3% of 70B) go to fp32 under NF4 (peft)
    assert 3.0 < ratio < 3.6


def test_70b_does_not_fit_in_24gb(monkeypatch):
    from studio.env import devices
    monkeypatch.setattr(devices, "gpu_memory", lambda index=0: (int(24e9), int(24e9), 0))  # an idle 24 GB card
    monkeypatch.setattr(devices, "cuda_capability", lambda index=0: (8, 9))
    e = est("cuda", mc=LLAMA_70B, model={"quantization": "nf4"})
    assert not e.fits
    assert e.total_gb > 24 and "24.0 GB" in e.warning
    small = est("cuda", model={"quantization": "nf4"})
    assert small.fits and small.warning == ""


def test_param_counts_match_the_demo_model():
    pc = param_counts(DEMO_SHAPE)
    total = pc["linear"] + pc["embed"] + pc["head"] + pc["norm"]
    assert abs(total - 134.5e6) < 0.5e6  # SmolLM2-135M


@pytest.mark.parametrize("bf16_gflops", [1.5, 398.0])  # an AVX2-only CPU, one with AVX512-BF16 (measured)
def test_no_torch_import_needed_and_auto_follows_the_cpu_probe(tmp_path, bf16_gflops):
    """With the CPU probe's figures cached (as after the first run on a machine), the estimate imports no torch,
    and compute dtype auto counts activations in the dtype the probe chose: 2 bytes instead of 4 for bf16."""
    import os

    from studio.models import precision
    threads = 2
    key = precision.machine_key(threads, DEMO_SHAPE["hidden_size"])
    (tmp_path / precision.CACHE).write_text(f'{{"{key}": {{"fp32": 150.0, "bf16": {bf16_gflops}}}}}')
    code = textwrap.dedent(f"""
        import sys
        from studio.config import RunConfig
        from studio.memory import estimate, DEMO_SHAPE
        args = dict(model_config=DEMO_SHAPE, row_tokens=100)
        auto = estimate(RunConfig().replace(train={{"threads": {threads}}}), "cpu", **args)
        fp32 = estimate(RunConfig().replace(model={{"compute_dtype": "float32"}}), "cpu", **args)
        print("torch" in sys.modules, auto.breakdown["activations"] / fp32.breakdown["activations"])
    """)
    env = {**os.environ, "STUDIO_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    assert out[0] == "False"
    ratio = float(out[1])
    if bf16_gflops > 150:
        assert 0.5 < ratio < 0.9  # the bf16 tensors halve; the fp32 LM head's logits and the 1-byte masks do not
    else:
        assert ratio == 1.0


# A short real run of the demo model in a child process; its peak RSS (ru_maxrss) against the estimate.
CHILD = textwrap.dedent("""
    import json, resource, sys, tempfile
    from pathlib import Path
    from studio.config import RunConfig
    from studio.train.recipe import build_trainer
    cfg = RunConfig.load(sys.argv[1])
    out = Path(tempfile.mkdtemp())
    trainer, tok, _ = build_trainer(cfg, out)
    trainer.args.eval_strategy = "no"
    trainer.train()
    print(json.dumps({"max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""")


@pytest.mark.slow
@pytest.mark.train
def test_estimate_within_15_percent_of_a_real_run(tmp_path, demo_model_dir):
    from studio import data
    from studio.models import cpu_precision, load_tokenizer
    # the dtype the probe picks, written into the config: the estimate here and the trainer child then use the same
    # one (under load the probe measures again per process). Checkpointing off, as this check was calibrated: with
    # it on, the demo's peak RSS on the CPU measured 1.27, 1.55 and 1.87 GB in three runs against 1.23 estimated
    # (not understood yet; the estimate says so in its notes)
    cfg = preset("balanced", data={"path": str(SAMPLE_JSONL)},
                 model={"compute_dtype": cpu_precision(demo_model_dir).dtype},
                 train={"max_steps": 4, "grad_accum": 1, "save_steps": 1000, "threads": 2,
                        "gradient_checkpointing": False})
    p = cfg.save(tmp_path / "cfg.yaml")
    stats = data.token_stats(data.from_config(cfg.data).examples, load_tokenizer(demo_model_dir),
                             cfg.train.max_length)
    e = estimate(cfg, "cpu", row_tokens=stats.p95)
    res = subprocess.run([sys.executable, "-c", CHILD, str(p)], capture_output=True, text=True, timeout=900,
                         env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    measured = json.loads(res.stdout.strip().splitlines()[-1])["max_rss"] / 1e9
    err = (e.total_gb - measured) / measured
    print(f"estimate {e.total_gb:.3f} GB, measured peak RSS {measured:.3f} GB, error {100 * err:+.1f}%")
    assert abs(err) < 0.15, (e.summary(), measured)
    # the guess from the data file alone (what the UI shows) is close too: within 20%, since it adds the row-length
    # guess's own error (characters / 4) to the measurement's spread (this config measured 1.60-2.00 GB peak RSS in
    # five runs on one machine, 2.00 inside a full suite run)
    guess = estimate(cfg, "cpu")
    assert abs(guess.total_gb - measured) / measured < 0.20, (guess.summary(), measured)


def test_several_gpus_per_gpu_figures_for_ddp_and_fsdp():
    """70B in 4 bits does not fit one 80 GB GPU; DDP keeps a whole copy per GPU (plus gradient buckets), FSDP
    over 8 GPUs shards the 4-bit weights and the LoRA state, so its per-GPU figure drops by most of the weights."""
    one = est("cuda", LLAMA_70B)
    ddp = est("cuda", LLAMA_70B, train={"devices": 8})
    fsdp = est("cuda", LLAMA_70B, train={"devices": 8, "distributed": "fsdp"})
    assert ddp.processes == fsdp.processes == 8 and one.processes == 1
    assert ddp.total_gb > one.total_gb and "ddp buckets" in ddp.breakdown
    assert fsdp.breakdown["weights"] < one.breakdown["weights"] / 4
    assert fsdp.total_gb < one.total_gb - 0.7 * one.breakdown["weights"]
    assert "per GPU (8 GPUs)" in fsdp.summary() and any("FSDP" in n for n in fsdp.notes)
    # on a CPU machine several processes each hold their own copy: the machine needs all of them
    cpu1, cpu2 = est("cpu"), est("cpu", train={"devices": 2})
    assert abs(cpu2.total_gb - 2 * cpu1.total_gb) < 0.01 and cpu2.processes == 2


def test_dpo_stage_doubles_the_activations():
    sft, dpo = est(), est(train={"stage": "dpo"})
    assert abs(dpo.breakdown["activations"] - 2 * sft.breakdown["activations"]) < 0.002
    assert dpo.total_gb > sft.total_gb and any("dpo" in n for n in dpo.notes)
    kto = est(train={"stage": "kto"})
    assert kto.breakdown["activations"] == dpo.breakdown["activations"]
