"""The trainer: `studio train CONFIG.yaml --output RUN_DIR [--resume]`, in its own process, no gradio.

QLoRA by default on every device: the base in 4-bit NF4 (double quant) through bitsandbytes, peft LoRA on
top, TRL's SFTTrainer, loss on assistant tokens only. Everything it has to say goes into the run folder
(see studio.metrics); it never asks whether a UI is watching.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from . import metrics
from .config import RunConfig

log = logging.getLogger("studio.train")

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
DATASET = "dataset.jsonl"
EVAL_SET = "eval.jsonl"
CONFIG = "config.yaml"


@dataclass
class TokenCounter:
    input_tokens: int = 0
    trained_tokens: int = 0


class _Stop:
    """Set by SIGTERM/SIGINT or by a STOP file in the run folder; checked once per optimiser step."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.flag = False

    def __call__(self) -> bool:
        return self.flag or (self.run_dir / metrics.STOP_FILE).exists()

    def install(self) -> dict:
        """Install the handlers; returns the previous ones for `restore` (tests run the trainer in-process)."""
        def handler(signum, frame):
            log.info("Received %s: saving a checkpoint and the adapter, then stopping.", signal.Signals(signum).name)
            self.flag = True
        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def setup_logging(run_dir: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    fh = logging.FileHandler(run_dir / metrics.LOG, encoding="utf-8")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    root = logging.getLogger("studio")
    root.handlers[:] = [fh, sh]
    root.setLevel(logging.INFO)
    root.propagate = False
    # transformers/TRL warnings are useful in the log too; keep their chatter at WARNING
    for name in ("transformers", "trl", "peft"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [fh, sh]
        lg.setLevel(logging.WARNING)
        lg.propagate = False


def last_checkpoint(run_dir: Path) -> Path | None:
    ckpts = [p for p in (run_dir / CHECKPOINTS).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").is_file()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


def set_threads(n: int) -> int:
    import torch
    if n <= 0:
        import psutil
        n = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def prepare_data(cfg: RunConfig, run_dir: Path, tokenizer):
    """Read + validate the data, split it, tokenize with the chat template. Returns (train_ds, eval_ds, report)."""
    from datasets import Dataset

    from . import data

    report = data.load_from_config(cfg.data)
    log.info("Data: %s", report.summary())
    for issue in report.issues[:20]:
        log.info("  row %s, column %s: %s (%s)", issue.row, issue.column, issue.problem, issue.fix)
    train_ex, eval_ex = data.split(report.examples, cfg.train.eval_fraction, cfg.train.seed)
    if not (run_dir / DATASET).exists():
        data.write_jsonl(report.examples, run_dir / DATASET)
    data.write_jsonl(eval_ex, run_dir / EVAL_SET)

    def tok(examples):
        rows = [data.tokenize_messages(m, tokenizer, cfg.train.max_length) for m in examples]
        rows = [r for r in rows if any(r["assistant_masks"])]  # cut to nothing trainable: no signal
        return Dataset.from_list(rows) if rows else None

    train_ds, eval_ds = tok(train_ex), tok(eval_ex)
    if train_ds is None:
        raise data.DataError(f"{cfg.data.path}: no example has an assistant answer inside the first "
                             f"{cfg.train.max_length} tokens. Raise Max sequence length.")
    log.info("Split: %d training examples, %d held out (seed %d).", len(train_ds),
             len(eval_ds) if eval_ds is not None else 0, cfg.train.seed)
    return train_ds, eval_ds, report


# --- speed levers (each measured on the 2-core CPU; figures and commands in bench/RESULTS.md) ---------------

VARLEN_SDPA = "studio_sdpa"


def _varlen_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """SDPA run once per example of a padding-free batch (the collator's cu_seq_lens give the edges).

    Stock SDPA sees a flattened batch as one sequence under a block-diagonal mask and computes every
    query x key pair of it: 4 packed 512-token rows made a 2048x2048 score matrix per head and layer, and
    the math kernel kept those for backward (10.4 GB peak RSS on the demo model). Per example it is causal
    attention over ~70 tokens, the mask is never read, and GQA needs no repeated K/V.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:  # padded batch or decoding: stock
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    edges = cu.tolist()
    gqa = query.shape[1] != key.shape[1]
    out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout, scale=scaling, is_causal=True,
        enable_gqa=gqa) for s, e in zip(edges[:-1], edges[1:])], dim=2)
    return out.transpose(1, 2).contiguous(), None


def _use_varlen_attention(model) -> str:
    """Point the model at per-example attention for padding-free batches; FlashAttention-2 where installed."""
    import importlib.util

    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        name = "flash_attention_2"  # varlen kernel reads the same cu_seq_lens; optional, never required
    else:
        AttentionInterface.register(VARLEN_SDPA, _varlen_sdpa)
        AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)  # padded (eval/chat) batches still get their mask
        name = VARLEN_SDPA
    try:
        model.set_attn_implementation(name)
    except Exception as e:  # an architecture without the attention interface keeps stock SDPA (still correct)
        log.info("Attention stays %s (%s).", model.config._attn_implementation, e)
        return model.config._attn_implementation
    return name


def _compact_lm_head(base) -> bool:
    """CPU: project only the positions that have a label through the LM head.

    TRL's fused head does that on Triton devices only; elsewhere it scores every position, runs the
    vocabulary matmul three times (forward, recompute, grad) and ~25 elementwise passes over (tokens x
    49k) tiles. Here: the ~43% assistant positions of the sample data, two matmuls (logits, grad), and
    log_softmax's own kernels. Same loss and metrics as TRL's (FusedCausalLMOutput). Models whose head
    scales or soft-caps its logits, or MoE routers, keep TRL's path.
    """
    import torch
    from trl.trainer.utils import FusedCausalLMOutput

    tc = base.config.get_text_config()
    if any(getattr(tc, k, None) not in (None, 1, 1.0) for k in
           ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")) \
            or getattr(tc, "output_router_logits", False):
        return False
    trl_forward = base.forward  # TRL's fused forward, kept for everything this one does not handle
    rows_per_chunk = 1024  # 1024 x 49k fp32 logits = 200 MB; longer batches are recomputed in backward

    def score(h, y, weight, bias):
        logits = torch.nn.functional.linear(h, weight, bias).float()
        lsm = torch.log_softmax(logits, dim=-1)
        with torch.no_grad():  # metrics only, like TRL's
            entropy = -(lsm.exp() * lsm).sum(-1)
            top1 = logits.argmax(-1) == y
        return lsm.gather(-1, y[:, None]).squeeze(-1), entropy, top1

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kw):
        if not fused_lm_head or labels is None or shift_labels is not None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kw)
        kw["use_cache"] = False
        hidden = self.base_model(*args, **kw).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        head = self.get_output_embeddings()
        h, y = hidden[mask], labels[mask]
        if h.shape[0] <= rows_per_chunk:
            parts = [score(h, y, head.weight, head.bias)]
        else:
            from torch.utils.checkpoint import checkpoint
            parts = [checkpoint(score, h[i:i + rows_per_chunk], y[i:i + rows_per_chunk], head.weight, head.bias,
                                use_reentrant=False) for i in range(0, h.shape[0], rows_per_chunk)]
        lp, ent, top1 = (torch.cat(x) for x in zip(*parts))
        log_probs = hidden.new_zeros(mask.shape, dtype=lp.dtype).masked_scatter(mask, lp)
        denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denom, log_probs=log_probs,
            entropy=ent.new_zeros(mask.shape).masked_scatter(mask, ent),
            is_top1=top1.new_zeros(mask.shape).masked_scatter(mask, top1), label_mask=mask)

    import types
    base.forward = types.MethodType(forward, base)
    return True


@functools.lru_cache(maxsize=1)
def _dropout_linear_cls():
    """nn.Linear for LoRA's A matrix with its input dropout fused in (built once; torch imported lazily)."""
    import torch

    class DropoutMatmul(torch.autograd.Function):
        # y = dropout(x) @ A^T, saving x (shared by q/k/v and gate/up, which read the same input) and a bool
        # mask: 1 byte per element instead of torch dropout's float mask + dropped copy (8 bytes).
        @staticmethod
        def forward(ctx, x, weight, p):
            keep = torch.rand(x.shape, device=x.device) >= p  # torch's bernoulli_ is slow with MKL on this AMD CPU
            scale = 1.0 / (1.0 - p)
            ctx.save_for_backward(x, keep, weight)
            ctx.scale = scale
            return torch.nn.functional.linear(torch.where(keep, x, 0.0), weight) * scale

        @staticmethod
        def backward(ctx, gy):
            x, keep, weight = ctx.saved_tensors
            gy = gy * ctx.scale
            gx = torch.where(keep, gy @ weight.to(gy.dtype), 0.0) if ctx.needs_input_grad[0] else None
            gw = None
            if ctx.needs_input_grad[1]:
                xd = torch.where(keep, x, 0.0)
                gw = (gy.reshape(-1, gy.shape[-1]).t() @ xd.reshape(-1, xd.shape[-1])).to(weight.dtype)
            return gx, gw, None

    class DropoutLinear(torch.nn.Linear):
        p = 0.0

        def forward(self, x):
            if self.training and self.p > 0 and self.bias is None and torch.is_grad_enabled():
                return DropoutMatmul.apply(x, self.weight, self.p)
            return super().forward(x)

    return DropoutLinear


def _fuse_lora_dropout(model) -> int:
    """Move each LoRA input dropout into its A matmul (same distribution: Bernoulli keep mask, 1/(1-p) scale).

    torch's CPU dropout took ~10 ms per [280 x 576] call here (MKL's Bernoulli on AMD) and kept 8 bytes per
    element for backward; 7 of them per layer were ~half the step time and half the activation memory.
    The module keeps its class hierarchy (nn.Linear) and weight, so state dicts and saved adapters are
    unchanged. Returns how many adapters were fused."""
    import torch
    cls = _dropout_linear_cls()
    n = 0
    for mod in model.modules():
        drops, a_mats = getattr(mod, "lora_dropout", None), getattr(mod, "lora_A", None)
        if not isinstance(drops, torch.nn.ModuleDict) or not isinstance(a_mats, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            lin = a_mats[name] if name in a_mats else None
            if type(drop) is torch.nn.Dropout and drop.p > 0 and type(lin) is torch.nn.Linear and lin.bias is None:
                lin.__class__ = cls
                lin.p = float(drop.p)
                drops[name] = torch.nn.Identity()
                n += 1
    return n


@functools.lru_cache(maxsize=1)
def _swiglu_cls():
    import torch

    class SwiGLU(torch.autograd.Function):
        # silu(g) * u keeping only g and u for backward (silu(g) is recomputed: one cheap pass); autograd's
        # version also keeps silu(g), a third (tokens x intermediate) tensor per layer.
        @staticmethod
        def forward(ctx, g, u):
            ctx.save_for_backward(g, u)
            return torch.nn.functional.silu(g) * u

        @staticmethod
        def backward(ctx, gp):
            g, u = ctx.saved_tensors
            return torch.ops.aten.silu_backward(gp * u, g), gp * torch.nn.functional.silu(g)

    return SwiGLU


def _fuse_swiglu(model) -> int:
    """Gated-SiLU MLPs (Llama, Mistral, Qwen2, SmolLM...) run through SwiGLU above: 6 KB per token and layer
    less kept for backward on the demo model (~12% of its activations). Other MLPs are left alone."""
    import types
    fn = _swiglu_cls()

    def forward(self, x):
        return self.down_proj(fn.apply(self.gate_proj(x), self.up_proj(x)))

    n = 0
    for mod in model.modules():
        if type(mod).__name__.endswith("MLP") and all(hasattr(mod, k) for k in ("gate_proj", "up_proj", "down_proj")) \
                and type(getattr(mod, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation") \
                and "forward" not in vars(mod) and type(mod).forward.__code__.co_argcount == 2:
            mod.forward = types.MethodType(forward, mod)
            n += 1
    return n


def _own_weights(model) -> int:
    """Copy the tensors a 4-bit CPU load left as views of the model file, so its mapping is released.

    transformers loads safetensors zero-copy; after NF4 quantisation only the embeddings and norms still point
    into the file, yet they keep all of it mapped, and every page read while quantising stays in RSS: 415 MB
    of the demo model's 540 MB file for a 113 MB embedding. Measured: RSS 0.97 -> 0.66 GB after load."""
    import gc
    seen: set[int] = set()
    for mod in model.modules():
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            if t is None or id(t) in seen or type(t).__name__ == "Params4bit" or t.device.type != "cpu":
                continue
            seen.add(id(t))
            t.data = t.data.clone()  # the Parameter object stays, so tied weights stay tied
    gc.collect()
    return len(seen)


def _optimizer(name: str, on_cuda: bool) -> str:
    """CUDA: adamw_torch -> PyTorch's fused AdamW (the same update in one kernel for all ~420 LoRA tensors;
    transformers' own default on torch >= 2.8). Not measured here (no GPU lent). On the CPU it made no
    difference (103 vs 102 tokens/s, bench/levers.py), so the CPU keeps the plain loop."""
    if on_cuda and name == "adamw_torch":
        return "adamw_torch_fused"
    return name


def _batching(t) -> dict:
    """SFTConfig batching. 'Packing' = padding-free batches of `batch_size` rows, not TRL's bins.

    Each batch's rows are concatenated into one sequence (attention kept per row by _varlen_sdpa), so
    no compute goes to padding, and a step still takes `batch_size` rows: the same steps per epoch and
    rows per optimiser step as an unpacked run, so learning rate and batch size mean what they say.
    TRL's 512-token bins put ~28 sample rows in each of the 4 rows of a batch: 7x the tokens per step,
    7x fewer updates per epoch and 7x the activation memory.
    """
    if t.packing:
        # rows are already cut at max_length by prepare_data; TRL refuses max_length with padding_free alone
        return dict(packing=False, padding_free=True, max_length=None, train_sampling_strategy="random")
    # similar lengths in a batch means little padding when packing is off
    return dict(packing=False, padding_free=False, max_length=t.max_length,
                train_sampling_strategy="group_by_length")


def build_trainer(cfg: RunConfig, run_dir: Path, callbacks=(), counter: TokenCounter | None = None):
    """Model + LoRA + SFTTrainer exactly as a studio run uses them (the benchmark reuses this)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from trl import SFTConfig, SFTTrainer

    from .models import load_model, load_tokenizer, pick_device, pick_dtype, resolve_source

    counter = counter or TokenCounter()
    device = pick_device()
    dtype = pick_dtype(cfg.model, device)
    threads = set_threads(cfg.train.threads) if device == "cpu" else None
    path = resolve_source(cfg.model.source)
    log.info("Model %s from %s on %s, compute dtype %s%s.", cfg.model.source, path, device,
             str(dtype).replace("torch.", ""), f", {threads} threads" if threads else "")
    tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    train_ds, eval_ds, report = prepare_data(cfg, run_dir, tokenizer)

    quant = cfg.model.quantization == "nf4"
    model = load_model(path, cfg.model, device)
    if quant and device == "cpu":
        _own_weights(model)
    log.info("Base loaded %s: %.0f MB of weights.", "in 4-bit NF4" + (" + double quant" if cfg.model.double_quant
             else "") if quant else "unquantised", model.get_memory_footprint() / 2**20)
    if quant:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    targets = cfg.lora.target_modules
    model = get_peft_model(model, LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
        target_modules="all-linear" if targets == ["all-linear"] else targets))
    attn = _use_varlen_attention(model) if cfg.train.packing else model.config._attn_implementation
    fused = _fuse_lora_dropout(model)
    if fused:
        log.info("LoRA dropout fused into %d adapter matmuls.", fused)
    _fuse_swiglu(model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA r=%d alpha=%d on %s: %.2f M trainable parameters; attention %s.", cfg.lora.r, cfg.lora.alpha,
             ",".join(targets), n_train / 1e6, attn)

    t = cfg.train
    on_cuda = device == "cuda"
    args = SFTConfig(
        output_dir=str(run_dir / CHECKPOINTS),
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio
        num_train_epochs=t.epochs, max_steps=t.max_steps if t.max_steps > 0 else -1,
        **_batching(t),
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        optim=_optimizer(t.optimizer, on_cuda), weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed, logging_steps=t.logging_steps, logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must reach the callback, which fails the run with advice
        eval_strategy="no" if eval_ds is None else ("steps" if t.eval_steps > 0 else "epoch"),
        eval_steps=t.eval_steps if t.eval_steps > 0 else None, prediction_loss_only=True,
        save_strategy="steps", save_steps=t.save_steps,
        bf16=on_cuda and dtype == torch.bfloat16, fp16=on_cuda and dtype == torch.float16,
        use_cpu=not on_cuda, report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        dataset_num_proc=None, remove_unused_columns=True,
    )

    class StudioSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                if "attention_mask" in inputs:
                    counter.input_tokens += int(inputs["attention_mask"].sum())
                else:  # padding-free: every position is a real token
                    counter.input_tokens += int(inputs["input_ids"].numel())
                counter.trained_tokens += int((inputs["labels"] != -100).sum())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = StudioSFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               processing_class=tokenizer, callbacks=list(callbacks))
    if not on_cuda and _compact_lm_head(trainer.model.get_base_model()):
        log.info("LM head: only labelled positions are projected.")
    if dtype == torch.float32:
        # TRL casts QLoRA adapters to bf16 (the paper's GPU recipe); on CPU bf16 is ~100x slower than fp32.
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    return trainer, tokenizer, report


def save_adapter(trainer, tokenizer, cfg: RunConfig, run_dir: Path) -> Path:
    out = run_dir / ADAPTER
    trainer.model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    cfg.save(out / "studio_config.yaml")
    return out


def run(cfg: RunConfig, run_dir: Path, resume: bool = False) -> int:
    """Train one run into run_dir. Returns the process exit code; status.json tells the outcome."""
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    stop = _Stop(run_dir)
    previous_handlers = stop.install()
    (run_dir / metrics.STOP_FILE).unlink(missing_ok=True)  # a stale request must not end the new attempt
    if not (run_dir / CONFIG).exists():
        cfg.save(run_dir / CONFIG)
    metrics.write_status(run_dir, "running", pid=os.getpid(), error=None, message="Loading model and data",
                         started=time.time())
    log.info("Run %s in %s (pid %d)%s.", cfg.name, run_dir, os.getpid(), " resuming" if resume else "")
    counter = TokenCounter()
    try:
        callback = metrics.make_callback(run_dir, stop, counter)
        trainer, tokenizer, _ = build_trainer(cfg, run_dir, [callback], counter)
        if stop():
            metrics.write_status(run_dir, "stopped", message="Stopped before training began.")
            return 0
        ckpt = last_checkpoint(run_dir) if resume else None
        if resume and ckpt is None:
            log.info("No checkpoint to resume from: starting at step 0.")
        if ckpt is not None:
            step = int(ckpt.name.split("-")[-1])
            metrics.append_metrics(run_dir, {"kind": "resume", "step": step, "time": time.time()})
            log.info("Resuming from %s (step %d).", ckpt.name, step)
        metrics.write_status(run_dir, "running", message="Training")
        t0 = time.time()
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        steps = trainer.state.global_step
        if trainer.eval_dataset is not None and not stop():
            last_eval = max((e["step"] for e in metrics.read_metrics_events(run_dir) if e.get("kind") == "eval"),
                            default=-1)
            if last_eval != steps:
                trainer.evaluate()
        out = save_adapter(trainer, tokenizer, cfg, run_dir)
        dt = time.time() - t0
        log.info("Saved the adapter to %s. %d steps in %.0f s; %d tokens (%d trained), %.1f tokens/s.",
                 out, steps, dt, counter.input_tokens, counter.trained_tokens, counter.input_tokens / max(dt, 1e-9))
        final = "stopped" if stop() else "finished"
        metrics.write_status(run_dir, final, step=steps, message=f"{final.capitalize()} at step {steps}; adapter saved.")
        return 0
    except Exception as e:  # every failure ends as a readable status, the traceback goes to train.log
        msg = explain(e)
        log.error(msg)
        _log_file_only(run_dir, traceback.format_exc())  # for a bug report; the console stays readable
        metrics.write_status(run_dir, "failed", error=msg, message=msg)
        return 1
    finally:
        (run_dir / metrics.STOP_FILE).unlink(missing_ok=True)
        for sig, h in previous_handlers.items():
            signal.signal(sig, h)


def _log_file_only(run_dir: Path, text: str) -> None:
    with open(run_dir / metrics.LOG, "a", encoding="utf-8") as f:
        f.write(text + "\n")


def explain(e: BaseException) -> str:
    """Turn an exception into a sentence that says what to change."""
    from .data import DataError
    from .models import ModelError
    if isinstance(e, (DataError, ModelError, metrics.NonFiniteLoss, ValueError)) and not _is_oom(e):
        return str(e)
    if _is_oom(e):
        return ("Out of memory. Lower the batch size (and raise gradient accumulation to keep the effective "
                "batch), lower Max sequence length, turn on gradient checkpointing, or use 4-bit quantisation.")
    return f"{type(e).__name__}: {e}"


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()
