"""The decisions the CUDA path makes, proven on the CPU with injected capabilities (issue 24): the compute dtype by
compute capability, the estimate against the memory that is free and what holds the rest, the terms the estimate
counts at long context, the OOM advice read from the run's settings, and the Chat tab's model freed before a run
needs the GPU. What only a GPU can show is in tests/test_cuda.py (marked `cuda`)."""
from __future__ import annotations

import pytest

from studio.config import RunConfig
from studio.env import devices

LLAMA31_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
GB = 1e9


@pytest.fixture
def card(monkeypatch):
    """Inject a GPU: card(capability, free_gb, total_gb, held_here_gb)."""
    def put(capability=(8, 9), free=24.0, total=24.0, here=0.0):
        monkeypatch.setattr(devices, "cuda_capability", lambda index=0: capability)
        monkeypatch.setattr(devices, "gpu_memory", lambda index=0: (int(free * GB), int(total * GB), int(here * GB)))
    return put


def _cfg(**train) -> RunConfig:
    return RunConfig().replace(model={"quantization": "nf4"}, lora={"r": 16},
                               train={"batch_size": 1, "max_length": 1024, "gradient_checkpointing": True, **train})


@pytest.mark.parametrize("capability,dtype", [((7, 5), "float16"), ((7, 0), "float16"), ((6, 1), "float16"),
                                              ((8, 0), "bfloat16"), ((8, 9), "bfloat16"), ((9, 0), "bfloat16")])
def test_auto_dtype_on_a_gpu_is_bf16_only_from_compute_capability_8(card, capability, dtype):
    """torch.cuda.is_bf16_supported() says True on a T4 (it counts emulation); the studio asks the capability."""
    import torch

    from studio.config import ModelSettings
    from studio.memory import compute_dtype
    from studio.models.load import pick_dtype
    card(capability)
    assert devices.cuda_dtype_name() == dtype
    assert compute_dtype(_cfg(), "cuda", 4096) == dtype  # the estimate decides as the loader does
    assert pick_dtype(ModelSettings(), "cuda") == getattr(torch, dtype)
    assert pick_dtype(ModelSettings(compute_dtype="bfloat16"), "cuda") == torch.bfloat16  # asked for: kept


def test_fp16_runs_get_the_grad_scaler_flag():
    """TrainingArguments' fp16 flag (its GradScaler) for a float16 run on CUDA, bf16 for bfloat16; neither on CPU."""
    import inspect

    from studio.train import recipe
    src = inspect.getsource(recipe)
    assert "fp16=device.cuda and dtype == torch.float16" in src and "bf16=dtype == torch.bfloat16" in src


def test_the_estimate_compares_with_free_memory_and_names_what_holds_the_rest(card):
    from studio.memory import estimate
    card(free=8.0, total=24.0, here=0.0)  # another program holds 16 GB of a 24 GB card
    e = estimate(_cfg(), "cuda", model_config=LLAMA31_8B, row_tokens=1024)
    assert e.available_gb == 8.0 and not e.fits
    assert "other programs hold 16.0 GB of the card's 24.0 GB" in e.warning
    card(free=8.0, total=24.0, here=16.0)  # this process (the Chat tab's model) holds it: Start frees that
    e = estimate(_cfg(), "cuda", model_config=LLAMA31_8B, row_tokens=1024)
    assert e.available_gb == 24.0 and e.fits and "other programs" not in e.warning
    assert any("unmeasured on a GPU" in n for n in e.notes)


def test_bf16_below_capability_8_counts_the_attention_scores(card):
    from studio.memory import estimate
    cfg = _cfg(max_length=4096).replace(model={"compute_dtype": "bfloat16"})
    card((7, 5))
    t4 = estimate(cfg, "cuda", model_config=LLAMA31_8B, row_tokens=4096)
    card((8, 0))
    a100 = estimate(cfg, "cuda", model_config=LLAMA31_8B, row_tokens=4096)
    # 32 heads x 4096^2 x (scores + softmax) x 2 bytes, one layer under checkpointing: 2.1 GB more
    assert t4.breakdown["activations"] - a100.breakdown["activations"] == pytest.approx(2.15, abs=0.05)
    assert any("math kernel" in n for n in t4.notes) and not any("math kernel" in n for n in a100.notes)


def test_the_lm_head_counts_every_position_unless_the_lmhead_lever_is_on(card):
    from studio.memory import estimate
    card()
    every = estimate(_cfg(levers=["none"], max_length=8192), "cuda", model_config=LLAMA31_8B, row_tokens=8192)
    labelled = estimate(_cfg(levers=["lmhead"], max_length=8192), "cuda", model_config=LLAMA31_8B, row_tokens=8192)
    # 8192 x 128256 x 14 bytes (bf16 logits, fp32 upcast, log-softmax, its gradient) against half the positions
    # x 16 bytes: 14.7 GB against 8.4 GB
    assert every.breakdown["activations"] - labelled.breakdown["activations"] == pytest.approx(6.3, abs=0.2)


def test_with_packing_off_the_longest_row_sizes_the_batch(tmp_path):
    import json

    from studio.memory import estimate
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "x " * n}]}
            for i, n in enumerate([20] * 40 + [1500])]  # one long row among short ones: the 95th percentile misses it
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(batch_size=4, max_length=2048).replace(data={"path": str(data)})
    packed = estimate(cfg, "cpu", model_config=LLAMA31_8B)
    padded = estimate(cfg.replace(train={"packing": False}), "cpu", model_config=LLAMA31_8B)
    assert padded.tokens_per_batch > 5 * packed.tokens_per_batch


def test_the_oom_advice_reads_the_runs_settings(tmp_path):
    from studio.train.failure import explain
    run = tmp_path / "run"
    run.mkdir()
    _cfg(batch_size=4, grad_accum=2, max_length=1024).save(run / "config.yaml")
    import torch
    msg = explain(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), run)
    assert msg.startswith("Out of memory.")
    assert "4-bit" not in msg and "checkpointing" not in msg  # it is NF4 with checkpointing already
    assert "Batch size from 4 to 2" in msg and "accumulation from 2 to 4" in msg and "from 1024 to 512" in msg
    cublas = explain(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), run)
    assert cublas.startswith("Out of memory.")
    _cfg(batch_size=1, max_length=256).save(run / "config.yaml")
    assert "smaller model" in explain(MemoryError(), run)


def test_the_chat_model_leaves_the_gpu_when_a_run_starts(monkeypatch, tmp_path):
    from studio.chat import engine
    from studio.ui.train import handlers
    monkeypatch.setattr(engine, "_BASE", engine._Base(key=("/models/Llama-3-8B", "cuda", "bfloat16", True),
                                                      model=object(), device="cuda"))
    monkeypatch.setattr(handlers.settings_mod, "values_to_config", lambda values, data, checks=None: _cfg())
    monkeypatch.setattr(RunConfig, "ready_to_train", lambda self: None)
    monkeypatch.setattr(handlers.runs, "launch", lambda cfg, root: tmp_path / "new-run")
    run_dir, msg = handlers.start_from_form([], {"path": "x"}, tmp_path)
    assert run_dir == str(tmp_path / "new-run")
    assert engine._BASE is None and "Llama-3-8B" in msg and "unloaded from the GPU" in msg
    # on the CPU the model stays: the trainer's RAM is not the chat's GPU
    cpu = engine._Base(key=("/models/demo", "cpu", "float32", False), model=object(), device="cpu")
    monkeypatch.setattr(engine, "_BASE", cpu)
    assert engine.free_gpu("the run") == "" and engine._BASE is cpu


def test_the_gpu_presets_turn_checkpointing_on_and_the_quick_one_does_not():
    from studio.config import preset
    assert preset("balanced").train.gradient_checkpointing and preset("quality").train.gradient_checkpointing
    assert not preset("quick").train.gradient_checkpointing  # the CPU demo fits without, ~30% faster


@pytest.mark.train
def test_a_run_trains_with_gradient_checkpointing_on(tiny_model_dir, small_dataset, tmp_path):
    """No test trained with checkpointing before (issue 24): the 4-bit base, k-bit preparation with checkpointing,
    the packed attention and non-reentrant recomputation together; the loss falls and only LoRA weights change."""
    from safetensors.torch import load_file

    from studio.runs.events import read_metrics
    from studio.train import lifecycle
    from tests.helpers import tiny_run_config
    cfg = tiny_run_config(tiny_model_dir, small_dataset).replace(
        train={"gradient_checkpointing": True, "max_steps": 8, "eval_steps": 0, "eval_fraction": 0.0})
    run = tmp_path / "run"
    assert lifecycle.run(cfg, run) == 0, (run / "train.log").read_text()[-3000:]
    loss = read_metrics(run).query("kind == 'train'").loss.tolist()
    assert len(loss) == 8 and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert weights and all("lora_" in k for k in weights)
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at 0: it moved


def test_a_merged_export_merges_on_the_cpu_even_where_there_is_a_gpu(trained_run, monkeypatch):
    """The 16-bit base of an 8B model is 16 GB: never on the card (a T4 runs out, a 4090 with chat loaded nearly)."""
    import torch

    from studio.env import devices as dev
    from studio.export.merged import merge_dtype, merged_model
    assert merge_dtype(0) == "float32" and merge_dtype(1) == "bfloat16"
    monkeypatch.setattr(dev, "gpus_present", lambda: 1)  # a machine with a GPU, as the exporter sees it
    model, _, _ = merged_model(trained_run)
    assert next(model.parameters()).device.type == "cpu" and model.dtype == torch.bfloat16
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_out_of_gpu_memory_while_answering_is_a_sentence(trained_run, monkeypatch):
    import torch

    from studio.chat import ChatEngine
    eng = ChatEngine.load(trained_run)

    def boom(**kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
    monkeypatch.setattr(eng.model, "generate", boom)
    with pytest.raises(RuntimeError, match="ran out of memory while answering: lower Max new tokens"):
        eng.generate([{"role": "user", "content": "Hi?"}])


# --- FSDP + QLoRA, built as peft's FSDP-QLoRA example (untested on GPUs) -------------------------------

def test_under_fsdp_the_base_keeps_one_dtype_per_unit(tiny_model_dir):
    """FSDP1 flattens each wrapped unit into one tensor: k-bit preparation's fp32 norms beside bf16-stored 4-bit
    weights refused to flatten. Under FSDP the base is not prepared: a decoder layer is all bf16 (peft's wrap
    policy gives each LoRA layer a unit of its own, fp32 alone)."""
    import torch

    from studio import stages
    from studio.train.recipe import Device, setup_adapter, setup_model
    cfg = RunConfig().replace(model={"source": str(tiny_model_dir), "quantization": "nf4", "compute_dtype": "bfloat16"},
                              train={"gradient_checkpointing": True})

    def dtypes(fsdp: bool):
        model = setup_adapter(cfg, setup_model(cfg, tiny_model_dir, Device("cpu", fsdp, 1), torch.bfloat16),
                              stages.get("sft"))
        inner = model.base_model.model.model
        layers = [{str(p.dtype) for n, p in layer.named_parameters() if "lora_" not in n} for layer in inner.layers]
        lora = [{str(p.dtype) for p in m.parameters()} for n, m in model.named_modules()
                if n.endswith(("lora_A.default", "lora_B.default"))]
        return layers, lora, inner.embed_tokens.weight.dtype
    layers, lora, embed = dtypes(fsdp=True)
    assert all(d == {"torch.bfloat16"} for d in layers) and embed == torch.bfloat16, layers
    assert lora and all(len(d) == 1 for d in lora)
    layers, _, embed = dtypes(fsdp=False)  # single GPU / DDP: prepared, norms upcast next to the 4-bit storage
    assert all(len(d) == 2 for d in layers) and embed == torch.float32, layers


def test_under_fsdp_the_process_group_comes_before_the_load_and_nothing_is_upcast(monkeypatch, tmp_path):
    import peft

    import studio.models
    from studio.train import recipe
    calls = []

    class Model:
        def get_memory_footprint(self):
            return 0

        def enable_input_require_grads(self):
            calls.append("input grads")
    monkeypatch.setattr(recipe, "fsdp_process_group", lambda: calls.append("process group"))
    monkeypatch.setattr(studio.models, "load_model", lambda *a, **k: calls.append(f"load fsdp={k['fsdp']}") or Model())
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", lambda m, **k: calls.append("kbit") or m)
    cfg = RunConfig().replace(model={"quantization": "nf4"}, train={"gradient_checkpointing": True})
    recipe.setup_model(cfg, tmp_path, recipe.Device("cuda:0", True, None), None)
    assert calls == ["process group", "load fsdp=True", "input grads"]
    calls.clear()
    recipe.setup_model(cfg, tmp_path, recipe.Device("cuda", False, None), None)
    assert calls == ["load fsdp=False", "kbit"]


class _FakeTrainer:
    def __init__(self, fsdp: bool, calls: list):
        from types import SimpleNamespace
        self.is_fsdp_enabled, self.calls = fsdp, calls
        plugin = SimpleNamespace(set_state_dict_type=lambda t: calls.append(f"state dict {t}"))
        self.accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin))
        self.model = SimpleNamespace(save_pretrained=lambda out, **k: calls.append("peft save"))

    def save_model(self, out):
        self.calls.append("save_model")


@pytest.mark.parametrize("main", [True, False])
def test_under_fsdp_every_rank_joins_the_adapters_save(monkeypatch, tmp_path, main):
    from types import SimpleNamespace

    from studio.env import ranks
    from studio.train.lifecycle import save_adapter
    monkeypatch.setattr(ranks, "is_main", lambda: main)
    calls: list = []
    tok = SimpleNamespace(save_pretrained=lambda out: calls.append("tokenizer"))
    save_adapter(_FakeTrainer(True, calls), tok, RunConfig(), tmp_path)
    assert calls[:2] == ["state dict FULL_STATE_DICT", "save_model"]  # the gather is a collective: every rank
    assert ("tokenizer" in calls) == main
    calls.clear()
    save_adapter(_FakeTrainer(False, calls), tok, RunConfig(), tmp_path)  # DDP / one process: rank 0 alone
    assert calls == (["peft save", "tokenizer"] if main else [])


def test_a_rank_that_ran_out_of_memory_is_named_with_the_runs_advice(tmp_path):
    from studio.runs.group import rank_out_of_memory
    log = tmp_path / "train.rank1.log"
    log.write_text("12:00 ERROR Out of memory. From an earlier attempt.\n")
    before = {log: log.stat().st_size}
    assert rank_out_of_memory(tmp_path, before) is None  # the earlier attempt's line is not this one's
    with open(log, "a") as f:
        f.write("12:05 INFO Rank 1 of 2\n12:06 ERROR Out of memory. Lower Batch size from 8 to 4 and raise it.\n")
    assert rank_out_of_memory(tmp_path, before) == (1, "Out of memory. Lower Batch size from 8 to 4 and raise it.")
