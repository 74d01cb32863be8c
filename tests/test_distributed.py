"""Several processes for one run (studio.runs.group, studio.env.ranks): the launcher, the checks before it starts,
and a real 2-process DDP run on the CPU (torchrun + gloo) of the tiny model through `studio train --devices 2`."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, SAMPLE_JSONL, studio_cli

UNBUFFERED = {"PYTHONUNBUFFERED": "1"}  # the launcher's and the ranks' lines as they come


# --- what runs where, decided before anything starts ----------------------------------------------

def _cfg(**train):
    from studio.config import preset
    return preset("quick", train=train)


def test_devices_are_checked_against_the_machine(monkeypatch):
    from studio.runs.group import resolve_devices

    assert resolve_devices(_cfg(devices=0), gpus=3) == 3  # 0 = every GPU present
    assert resolve_devices(_cfg(devices=2), gpus=4) == 2
    with pytest.raises(ValueError, match=r"train.devices is 8 but this machine has 4 GPUs: set GPUs to 4 or fewer"):
        resolve_devices(_cfg(devices=8), gpus=4)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert resolve_devices(_cfg(devices=2), gpus=0) == 2  # CPU processes (gloo): the path the tests take
    assert resolve_devices(_cfg(devices=0), gpus=0) == 1
    with pytest.raises(ValueError, match="no GPU and 2 CPU cores"):
        resolve_devices(_cfg(devices=4), gpus=0)
    with pytest.raises(ValueError, match="FSDP needs GPUs"):
        resolve_devices(_cfg(devices=2, distributed="fsdp"), gpus=0)
    with pytest.raises(ValueError, match="Multi-GPU strategy"):
        _cfg(distributed="zero3")


@pytest.mark.train
def test_cli_refuses_more_devices_than_the_machine_has(tmp_path):
    cfg = tmp_path / "run.yaml"
    _cfg().replace(data={"path": str(SAMPLE_JSONL)}).save(cfg)
    res = studio_cli("train", cfg, "--output", tmp_path / "run", "--devices", "64", timeout=120, cwd=ROOT)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert "train.devices is 64 but this machine has" in res.stderr, res.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was created


def test_launcher_command_and_accelerate_config(tiny_model_dir, tmp_path):
    from studio.runs.group import accelerate_config, launcher_command

    args = ["train", "RUN/config.yaml", "--output", "RUN", "--devices", "4"]
    gpu = launcher_command(4, True, tmp_path / "accelerate.yaml", args)
    assert gpu[1:] == ["-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "accelerate.yaml"),
                       "--num_processes", "4", "-m", "studio", *args]
    cpu = launcher_command(2, False, tmp_path / "accelerate.yaml", args)
    assert cpu[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "studio", *args]

    ddp = accelerate_config(_cfg(devices=4), 4, gpus=True)
    assert ddp["distributed_type"] == "MULTI_GPU" and ddp["num_processes"] == 4 and "fsdp_config" not in ddp
    assert {"machine_rank", "num_machines", "main_process_ip", "main_process_port"} <= set(ddp)  # a cluster edits these
    fsdp = accelerate_config(_cfg(devices=4, distributed="fsdp"), 4, gpus=True)
    f = fsdp["fsdp_config"]
    assert fsdp["distributed_type"] == "FSDP"
    assert f["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in f  # accelerate takes the model's own _no_split_modules
    assert f["fsdp_use_orig_params"] is False and f["fsdp_cpu_ram_efficient_loading"] is True
    assert accelerate_config(_cfg(devices=2), 2, gpus=False)["distributed_type"] == "MULTI_CPU"


def test_fsdp_wraps_each_models_own_decoder_layer():
    """With no class named in the config, accelerate's transformer wrap policy takes the model's _no_split_modules:
    the decoder layer of Llama-style models, and GPT-2's GPT2Block (which a guessed '<Arch>DecoderLayer' missed)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    for model, layer in ((LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                                       num_attention_heads=2, num_key_value_heads=1,
                                                       vocab_size=100)), "LlamaDecoderLayer"),
                         (GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, bos_token_id=0,
                                                     eos_token_id=0)), "GPT2Block")):
        plugin = FullyShardedDataParallelPlugin(auto_wrap_policy="transformer_based_wrap")
        plugin.set_auto_wrap_policy(model)
        assert plugin.transformer_cls_names_to_wrap == [layer]


def test_fsdp_stores_4bit_weights_in_the_compute_dtype(tiny_model_dir):
    """FSDP flattens parameters of one dtype: the 4-bit weights must be stored in the compute dtype, or they are
    sharded as the wrong type (silently wrong weights). Without FSDP they stay packed in uint8."""
    import torch

    from studio.config import ModelSettings
    from studio.models import load_model

    m = ModelSettings(source=str(tiny_model_dir), compute_dtype="float32")
    packed = load_model(tiny_model_dir, m, "cpu").model.layers[0].self_attn.q_proj.weight
    sharded = load_model(tiny_model_dir, m, "cpu", fsdp=True).model.layers[0].self_attn.q_proj.weight
    assert type(packed).__name__ == type(sharded).__name__ == "Params4bit"
    assert packed.dtype == torch.uint8 and sharded.dtype == torch.float32
    assert sharded.quant_state.dtype == torch.float32


def test_show_config_gives_the_launch_and_the_accelerate_config(tmp_path):
    from studio.ui.settings import config_text, config_values

    yaml_text, cmd = config_text(config_values(_cfg(devices=2)), None, tmp_path)
    assert "devices: 2" in yaml_text and "distributed: ddp" in yaml_text
    assert "accelerate launch --config_file accelerate.yaml -m studio train" in cmd
    assert "# num_processes: 2" in cmd and "machine_rank" in cmd and "main_process_ip" in cmd
    _, one = config_text(config_values(_cfg()), None, tmp_path)
    assert "accelerate" not in one


def test_gpu_controls_are_disabled_with_a_reason_below_two_gpus():
    import gradio as gr

    from studio.env.devices import gpus_present
    from studio.ui import settings

    gpus = gpus_present()
    with gr.Blocks():
        s = settings.build()
    for key in settings.MULTI_GPU:
        comp = s.by_key(*key)
        if gpus < 2:  # CI's machine: none
            assert comp.interactive is False and "so its runs use one process" in comp.info, (key, comp.info)
        else:
            assert comp.interactive is not False, key


# --- a real 2-process run on the CPU ---------------------------------------------------------------

def _events(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e.get("kind") == kind]


def _rank_lines(run: Path, pattern: str) -> dict[int, str]:
    found = {}
    for log in (run / "train.log", run / "train.rank1.log"):
        for m in re.finditer(pattern, log.read_text(encoding="utf-8")):
            found[int(m.group(1))] = m.group(2)
    return found


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_model_dir):
    from studio.config import preset

    d = tmp_path_factory.mktemp("ddp")
    data = d / "small.jsonl"
    data.write_text("".join(SAMPLE_JSONL.read_text(encoding="utf-8").splitlines(keepends=True)[:64]), encoding="utf-8")
    cfg = preset("quick", model={"source": str(tiny_model_dir)}, data={"path": str(data)}, lora={"r": 8, "alpha": 32},
                 train={"max_steps": 8, "learning_rate": 1e-2, "batch_size": 2, "max_length": 128, "save_steps": 4,
                        "eval_steps": 4, "eval_fraction": 0.1, "devices": 2, "seed": 3}).replace(name="ddp")
    config = d / "ddp.yaml"
    cfg.save(config)
    t = time.perf_counter()
    res = studio_cli("train", config, "--output", d / "run", timeout=600, cwd=ROOT, env=UNBUFFERED)
    print(f"2-process DDP run: {time.perf_counter() - t:.0f} s")
    return d / "run", res, config


def test_ddp_run_on_two_cpu_processes(ddp_run):
    run, res, _ = ddp_run
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Launching 2 processes" in res.stderr and "torch.distributed.run" in res.stderr
    st = json.loads((run / "status.json").read_text(encoding="utf-8"))
    assert st["state"] == "finished" and st["step"] == 8, st
    assert (run / "accelerate.yaml").is_file() and "num_processes: 2" in (run / "accelerate.yaml").read_text()

    # one writer: each step logged once, in order; rank 1 wrote its own log and nothing of the run folder's
    train = _events(run, "train")
    steps = [e["step"] for e in train]
    assert steps == sorted(set(steps)) and steps[-1] == 8, steps
    assert len(_events(run, "summary")) == 1 and _events(run, "summary")[0]["processes"] == 2
    assert "Rank 0 of 2" in (run / "train.log").read_text() and "Rank 1 of 2" in (run / "train.rank1.log").read_text()
    assert "Rank 1" not in (run / "train.log").read_text()
    # the loss falls
    first, last = train[0]["loss"], sum(e["loss"] for e in train[-3:]) / 3
    assert last < first, [e["loss"] for e in train]

    # the ranks saw different rows, and ended with the same LoRA weights (DDP averaged their gradients)
    batches = _rank_lines(run, r"Rank (\d) first batch: (\[.*\])")
    assert set(batches) == {0, 1}, batches
    assert json.loads(batches[0]) != json.loads(batches[1]), batches
    digests = _rank_lines(run, r"Rank (\d) LoRA weights sha256 (\w+)")
    assert set(digests) == {0, 1} and digests[0] == digests[1], digests


def test_ddp_adapter_reloads_and_base_is_unchanged(ddp_run, tiny_model_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run, res, _ = ddp_run
    assert res.returncode == 0, res.stderr[-3000:]
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # B starts at 0: it learned
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 4
    after = model.get_base_model().state_dict()
    for k, v in before.items():  # the adapted layers keep their weight under base_layer
        assert torch.equal(v, after.get(k, after.get(k.replace(".weight", ".base_layer.weight")))), k


def test_sigterm_to_the_launcher_stops_every_rank_and_resumes_with_two(ddp_run, tmp_path):
    """SIGTERM to `studio train --devices 2` (the group's parent) stops both ranks at the same step with a
    checkpoint; `--resume` continues that checkpoint with 2 processes."""
    _, _, config = ddp_run
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "studio", "train", str(config), "--output", str(run),
                             "--max-steps", "400"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, **UNBUFFERED})
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            st = json.loads((run / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            st = {}
        if st.get("state") == "running" and (st.get("step") or 0) >= 2:
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the run did not reach step 2")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-4000:]
    st = json.loads((run / "status.json").read_text(encoding="utf-8"))
    assert st["state"] == "stopped", st
    stopped_at = st["step"]
    assert 2 <= stopped_at < 400 and (run / "checkpoints" / f"checkpoint-{stopped_at}").is_dir()
    # both ranks left the loop at the same step: their last LoRA digests are equal
    digests = _rank_lines(run, r"Rank (\d) LoRA weights sha256 (\w+)")
    assert set(digests) == {0, 1} and digests[0] == digests[1], digests

    res = studio_cli("train", config, "--output", run, "--resume", "--max-steps", stopped_at + 3, timeout=600,
                     cwd=ROOT, env=UNBUFFERED)
    assert res.returncode == 0, res.stderr[-4000:]
    st = json.loads((run / "status.json").read_text(encoding="utf-8"))
    assert st["state"] == "finished" and st["step"] == stopped_at + 3, st
    resumed = _events(run, "resume")
    assert resumed and resumed[-1]["step"] == stopped_at and resumed[-1]["processes"] == 2
    assert "Launching 2 processes" in res.stderr and "resumes with" not in res.stderr

    # a different number of processes: transformers resumes it; the log says what changed
    res = studio_cli("train", config, "--output", run, "--resume", "--devices", "1", "--max-steps", stopped_at + 5,
                     timeout=600, cwd=ROOT, env=UNBUFFERED)
    assert res.returncode == 0, res.stderr[-4000:]
    st = json.loads((run / "status.json").read_text(encoding="utf-8"))
    assert st["state"] == "finished" and st["step"] == stopped_at + 5 and st["processes"] == 1, st
    assert "written by 2 processes and resumes with 1" in res.stderr, res.stderr[-3000:]
