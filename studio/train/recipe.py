"""The training recipe, along torchtune's setup steps: device, data, model, adapter, training arguments, trainer.
`build_trainer` runs them in order, exactly as a studio run does (the benchmarks reuse it); what differs between
stages is the stage's glue (studio.stages names it: `sft`, `preference` or `grpo`).

QLoRA by default on every device: the base in 4-bit NF4 through bitsandbytes, peft LoRA on top, a TRL trainer;
bf16 = autocast mixed precision with the LoRA weights, their gradients and optimiser states in fp32.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .. import stages
from ..config import RunConfig
from ..env import ranks
from ..env.devices import physical_cores, pick_device
from ..runs.layout import CHECKPOINTS, CONFIG
from . import grpo, preference, sft, speed, trackers
from .callback import TokenCounter

log = logging.getLogger("studio.train")
# studio.stages' `glue` -> the module that builds its trainer
GLUE = {"sft": sft, "preference": preference, "grpo": grpo}


@dataclass
class Device:
    name: str           # "cpu", "cuda" or "cuda:<local rank>"
    fsdp: bool          # a multi-process FSDP run
    threads: int | None  # torch threads on the CPU

    @property
    def cuda(self) -> bool:
        return self.name.startswith("cuda")


def set_threads(n: int) -> int:
    """torch's CPU threads: n (0 = one per physical core), shared among the ranks of this machine in a group, since
    two ranks with a thread per core each fight over every core."""
    import torch
    total = n if n > 0 else physical_cores()
    if ranks.in_group():
        total = max(1, total // max(1, ranks.local_world_size()))
    torch.set_num_threads(total)
    return total


def setup_device(cfg: RunConfig) -> Device:
    """Step 1: the device (each rank of a GPU group its own GPU) and, on the CPU, the threads (before the precision
    probe: it measures on them)."""
    import torch
    name = pick_device()
    if name == "cuda" and ranks.in_group():
        torch.cuda.set_device(ranks.local_rank())
        name = f"cuda:{ranks.local_rank()}"
    threads = set_threads(cfg.train.threads) if name == "cpu" else None
    fsdp = ranks.in_group() and cfg.train.distributed == "fsdp"
    if ranks.in_group():
        log.info("Rank %d of %d (%s, %s).", ranks.rank(), ranks.world_size(), "FSDP" if fsdp else "DDP", name)
    return Device(name, fsdp, threads)


def setup_model_source(cfg: RunConfig, device: Device, run_dir: Path | None = None):
    """The model folder (a hub model not cached yet is downloaded, its progress in status.json's message, which the
    Train tab shows), its compute dtype (on the CPU with auto: the precision probe's choice, logged with its
    figures) and its tokenizer."""
    import torch

    from ..models import cpu_precision, load_tokenizer, pick_dtype
    path = _resolve_with_progress(cfg.model.source, run_dir)
    if device.name == "cpu" and cfg.model.compute_dtype == "auto":
        # one measurement decides: a probe that is not kept (taken under load) would measure again on every call,
        # and two calls could then choose differently for the arguments and the load
        probe = cpu_precision(path)
        log.info("%s.", probe.line())
        dtype = getattr(torch, probe.dtype)
    else:
        dtype = pick_dtype(cfg.model, "cuda" if device.cuda else device.name, path)
    log.info("Model %s from %s on %s, compute dtype %s%s.", cfg.model.source, path, device.name,
             str(dtype).replace("torch.", ""), f", {device.threads} threads" if device.threads else "")
    return path, dtype, load_tokenizer(path, cfg.model.trust_remote_code, cfg.model.chat_template)


def _resolve_with_progress(source: str, run_dir: Path | None, tick: float = 1.0) -> Path:
    """resolve_source, with a hub download's progress (huggingface_hub's own bars, studio.models.progress) written
    to status.json's message every `tick` seconds: "Downloading org/name: 412 MB of 988 MB (41%), ... left"."""
    import threading

    from ..models import resolve_source
    from ..models.progress import DownloadWatch
    from ..runs import events
    watch, done = DownloadWatch(), threading.Event()

    def report() -> None:
        while not done.wait(tick):
            st = watch.state()
            if st.total_bytes and run_dir is not None:
                events.write_status(run_dir, "running", message=f"Downloading {source}: {st.line()}")
                log.info("Downloading %s: %s", source, st.line())

    reporter = threading.Thread(target=report, name="studio-download-progress", daemon=True)
    reporter.start()
    try:
        return resolve_source(source, tqdm_class=watch.tqdm_class())
    finally:
        done.set()
        reporter.join()


def setup_model(cfg: RunConfig, path: Path, device: Device, dtype):
    """Step 3: the base, 4-bit NF4 when the config says so, prepared for k-bit training (norms and embeddings in
    fp32, input gradients for checkpointing). Under FSDP not prepared: FSDP1 flattens each wrapped unit into one
    tensor of one dtype, and the preparation's fp32 norms beside the compute-dtype 4-bit storage refuse to flatten
    ("Must flatten tensors with uniform dtype"); peft's FSDP-QLoRA example and TRL skip it there too."""
    from peft import prepare_model_for_kbit_training

    from ..models import load_model
    quant = cfg.model.quantization == "nf4"
    if device.fsdp:
        fsdp_process_group()
    model = load_model(path, cfg.model, device.name, fsdp=device.fsdp, dtype=dtype)
    log.info("Base loaded %s: %.0f MB of weights.", "in 4-bit NF4" + (" + double quant" if cfg.model.double_quant
             else "") if quant else "unquantised", model.get_memory_footprint() / 2**20)
    if quant and device.fsdp:
        if cfg.train.gradient_checkpointing:
            model.enable_input_require_grads()  # what the preparation does for checkpointing, without the upcast
        log.info("FSDP: the base is not prepared for k-bit training; norms and embeddings stay %s, one dtype per "
                 "FSDP unit (untested on GPUs yet).", str(dtype).replace("torch.", ""))
    elif quant:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    return model


def fsdp_process_group() -> None:
    """The process group before the model loads, as the training arguments would make it: transformers loads the
    weights RAM-efficiently (rank 0 reads them, the others get them from it, accelerate's
    fsdp_cpu_ram_efficient_loading) only when a process group exists at from_pretrained. Loaded before it, every
    rank quantised the whole model onto its own GPU: a 70B does not load on 2 x 24 GB, the case FSDP is for."""
    from accelerate import PartialState
    PartialState()


def setup_adapter(cfg: RunConfig, model, stage: stages.Stage):
    """Step 4: the LoRA adapter: the one train.start_from names (it keeps its own shape), else a new one seeded from
    the run's seed. Packing stages get per-row attention for padding-free batches."""
    from peft import LoraConfig, get_peft_model
    if cfg.train.start_from.strip():
        start = start_adapter(cfg.train.start_from)
        # the adapter keeps its own LoRA shape (r, alpha, targets); this run's LoRA fields do not apply
        model = load_start_adapter(model, start, cfg.model.source)
        lc = model.peft_config["default"]
        log.info("Continuing the adapter in %s (r=%d, alpha=%d)%s.", start, lc.r, lc.lora_alpha,
                 "; it is also the frozen reference of the preference loss" if stage.frozen_reference else "")
    else:
        from transformers import set_seed
        # the new adapter's random init (LoRA A) from the run's seed: the same config trains the same adapter. The
        # Trainer seeds only when it is built, after this; unseeded, each process drew another A (runs differed
        # from step 3 on, up to 2% in loss on the tiny model)
        set_seed(cfg.train.seed)
        targets = cfg.lora.target_modules
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
            target_modules="all-linear" if targets == ["all-linear"] else targets))
    attn = speed.packed_attention(model) if cfg.train.packing and stage.packing else \
        model.config._attn_implementation  # DPO/KTO trainers pad their own batches (chosen + rejected, or + KL)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lc = model.peft_config["default"]
    names = lc.target_modules if isinstance(lc.target_modules, str) else \
        ",".join(sorted({m.split(".")[-1] for m in lc.target_modules}))  # a loaded adapter lists full paths
    log.info("LoRA r=%d alpha=%d on %s: %.2f M trainable parameters; attention %s.", lc.r, lc.lora_alpha, names,
             n_train / 1e6, attn)
    return model


def training_arguments(cfg: RunConfig, run_dir: Path, dtype, device: Device, has_eval: bool) -> dict:
    """Step 5: the TrainingArguments every stage shares (the glue adds its TRL config's own)."""
    import torch
    t, group = cfg.train, ranks.in_group()
    return dict(
        output_dir=str(run_dir / CHECKPOINTS),
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio
        num_train_epochs=t.epochs, max_steps=t.max_steps if t.max_steps > 0 else -1,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        optim=optimizer(t.optimizer, device.cuda), weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        seed=t.seed, data_seed=t.seed, logging_steps=t.logging_steps, logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must reach the callback, which fails the run with advice
        eval_strategy="no" if not has_eval else ("steps" if t.eval_steps > 0 else "epoch"),
        eval_steps=t.eval_steps if t.eval_steps > 0 else None, prediction_loss_only=True,
        save_strategy="steps", save_steps=t.save_steps,
        # transformers' rotation keeps its best_model_checkpoint (lowest eval loss) besides the newest ones
        save_total_limit=t.save_total_limit or None,
        metric_for_best_model="eval_loss" if has_eval else None, greater_is_better=False,
        # bf16 = autocast on GPU and CPU alike: the LoRA weights, their gradients and the optimiser states stay fp32
        # (pure-bf16 adapters ended the demo run at loss 0.331 where fp32 ended at 0.269)
        bf16=dtype == torch.bfloat16, fp16=device.cuda and dtype == torch.float16,
        use_cpu=not device.cuda, disable_tqdm=True, dataloader_num_workers=0,
        # several processes: gloo on CPU; LoRA leaves no parameter unused, so DDP need not search for them
        ddp_backend=("nccl" if device.cuda else "gloo") if group else None,
        ddp_find_unused_parameters=False if group else None,
        dataset_num_proc=None,
        **trackers.arguments(t.report_to, run_dir),  # transformers' own report_to; none = []
    )


def build_trainer(cfg: RunConfig, run_dir: Path, callbacks=(), counter: TokenCounter | None = None):
    """Model + LoRA + the stage's TRL trainer exactly as a studio run uses them. Returns (trainer, tokenizer,
    data report)."""
    counter = counter or TokenCounter()
    cfg.ready_to_train()
    trackers.prepare(cfg.train.report_to, run_dir)  # refused before anything loads; its variables set
    stage = stages.get(cfg.train.stage)
    glue = GLUE[stage.glue]
    device = setup_device(cfg)
    path, dtype, tokenizer = setup_model_source(cfg, device, run_dir)
    train_ds, eval_ds, report = glue.prepare(stage, cfg, run_dir, tokenizer)   # step 2
    model = setup_adapter(cfg, setup_model(cfg, path, device, dtype), stage)
    common = training_arguments(cfg, run_dir, dtype, device, eval_ds is not None)
    # the adapter as it is now, in fp32: TRL casts QLoRA adapters to bf16 (the paper's GPU recipe); here they stay
    # fp32 under any compute dtype (mixed precision), and a started-from adapter comes back exactly, not bf16-rounded.
    # Not under FSDP: it flattens one dtype per wrapped unit, and the bitsandbytes FSDP-QLoRA recipe keeps bf16
    exact = None if device.fsdp else \
        {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = glue.build(stage, model, tokenizer, common, cfg, train_ds, eval_ds, callbacks, counter, device.name,
                         device.fsdp)
    fp32_adapters(trainer, exact)
    return trainer, tokenizer, report


def optimizer(name: str, on_cuda: bool) -> str:
    """train.optimizer as transformers names it: auto = fused AdamW on CUDA, adamw_torch (foreach) on the CPU,
    where fused measured 1.01x (bench/RESULTS.md)."""
    if name != "auto":
        return name
    return "adamw_torch_fused" if on_cuda else "adamw_torch"


def start_adapter(start_from: str) -> Path:
    """The adapter folder `train.start_from` names: a run folder (its final adapter), RUN/checkpoint-N, one of the
    run's checkpoint folders, or an adapter folder. ValueError says what is missing."""
    from ..runs.layout import resolve_adapter
    p = Path(start_from).expanduser()
    if p.name.startswith("checkpoint-") and not (p / "adapter_config.json").is_file() and (p.parent / CONFIG).is_file():
        return resolve_adapter(p.parent, p.name)[0]  # RUN/checkpoint-N, as the field's help writes it
    try:
        return resolve_adapter(p)[0]
    except ValueError as e:
        raise ValueError(f"Start from: {e}") from None


def load_start_adapter(model, start: Path, run_base: str):
    """peft's PeftModel on `model` from the adapter folder `start`, trainable. An adapter trained on another base
    (other widths or layers) makes peft raise "size mismatch for ...lora_A" per weight: a ValueError naming both
    bases instead."""
    from peft import PeftModel

    from ..models import check_weights
    check_weights(start)  # a damaged or foreign weights file named, not a safetensors error
    try:
        return PeftModel.from_pretrained(model, str(start), is_trainable=True)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        from ..env.io import read_json_dict
        base = read_json_dict(start / "adapter_config.json").get("base_model_name_or_path") or "an unnamed model"
        raise ValueError(f"Start from: the adapter in {start} was trained on {base}, whose layers have other sizes "
                         f"than this run's base model ({run_base}): an adapter only continues on the base it was "
                         f"trained on. Set model.source to {base}, or clear train.start_from to train a new "
                         f"adapter.") from None


def fp32_adapters(trainer, exact: dict | None) -> None:
    """Trainable weights back in fp32, with their exact values: autocast computes in the low precision, the
    weights, gradients and optimiser states it updates stay fp32. exact=None: left as they are (FSDP)."""
    import torch
    if exact is None:
        return
    for n, p in trainer.model.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = exact[n].to(p.device) if n in exact else p.data.float()
