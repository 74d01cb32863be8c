"""Speed levers of the trainer: each one named, applied by `apply`, switched by `train.levers`, measured
(bench/levers.py, figures in bench/RESULTS.md) and tested to compute the same loss and gradients
(tests/test_speed.py). Nothing here replaces a library object's `forward` or `__class__`.

| lever       | what                                                     | AVX2 fp32 | AVX-512 fp32 | AVX-512 bf16 |
|-------------|----------------------------------------------------------|-----------|--------------|--------------|
| lmhead      | LM head on the labelled positions only (logits_to_keep)  | +26%      | +40-50%      | +56%         |
| dropout     | LoRA input dropout fused into the A matmul, 1-byte mask  | +7%       | noise        | +10%         |
| own_weights | copy the 4-bit load's last views of the model file       | +12%      | noise        | noise        |
| attn_fp32   | bf16 runs: the packed attention computed in fp32          | -         | -            | +14%         |
| liger       | Liger kernels via TRL's use_liger_kernel (CUDA only)     | not measured: no GPU lent yet           |

(tokens/s against the lever off, bench/levers.py; most also lower peak RSS, by 0.1-0.4 GB: bench/RESULTS.md.)

None of them has been measured on a GPU yet, so on CUDA "auto" applies none: "auto" means measured faster here.
"liger" (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE as Triton kernels, tested by their authors against the
eager modules) is applied only when named in train.levers, where the liger-kernel package is installed;
bench/gpu_qlora.py measures it on and off. Packed attention
(`packed_attention`) is not a lever: it is what makes padding-free batches correct, so packing always has it.
"""
from __future__ import annotations

import functools
import inspect
import logging

log = logging.getLogger("studio.train")

LEVERS = {
    "lmhead": "project only the labelled positions through the LM head (the model's own logits_to_keep)",
    "dropout": "LoRA input dropout fused into the A matmul with a 1-byte mask",
    "own_weights": "copy the tensors a 4-bit CPU load leaves mapped from the model file",
    "attn_fp32": "in bf16 runs on the CPU, the attention computed in fp32 (its bf16 CPU backward is 2.2x slower)",
    "liger": "Liger's Triton kernels through TRL's use_liger_kernel (CUDA, where liger-kernel is installed)",
}
MEASURED = {"cpu": ("lmhead", "dropout", "own_weights", "attn_fp32"), "cuda": ()}  # bench/RESULTS.md


def liger_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("liger_kernel") is not None


def resolve(names: list[str], device: str) -> set[str]:
    """The levers a run uses: "auto" = those measured faster on this kind of device (none on CUDA yet, Liger
    included: it is used only when named); [] or "none" = none."""
    out: set[str] = set()
    for n in names:
        if n == "auto":
            out |= set(MEASURED.get(device, ()))
        elif n != "none":
            out.add(n)
    return out


def use_liger(levers: set[str], device: str) -> bool:
    """Whether the trainer's arguments turn Liger on: it must be set before the trainer is built, unlike the
    levers `apply` switches on afterwards."""
    return "liger" in levers and device == "cuda" and liger_available()


def apply(trainer, device: str, levers: set[str]) -> list[str]:
    """Switch the chosen levers on for a built trainer; returns what was applied, with counts."""
    model = trainer.model
    done = []
    if "own_weights" in levers and device == "cpu" and getattr(model, "is_loaded_in_4bit", False):
        done.append(f"own_weights ({_own_weights(model)} tensors)")
    if "dropout" in levers:
        n = _fuse_lora_dropout(model)
        if n:
            done.append(f"dropout ({n} adapters)")
    if "attn_fp32" in levers and device == "cpu" and (trainer.args.bf16 or trainer.args.fp16) \
            and model.config._attn_implementation in (PACKED_SDPA, "sdpa"):
        _register_attention()
        model.set_attn_implementation(PACKED_SDPA_FP32)
        done.append("attn_fp32")
    if "lmhead" in levers and _can_keep_logits(trainer) and not getattr(trainer.args, "use_liger_kernel", False):
        trainer.studio_labelled_head = True
        done.append("lmhead")
    if getattr(trainer.args, "use_liger_kernel", False):
        done.append("liger")
    return done


# --- packed attention (what packing means; not switchable) -----------------------------------------------

PACKED_SDPA = "studio_sdpa"


def _packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
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


PACKED_SDPA_FP32 = "studio_sdpa_fp32"


def _packed_sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    """_packed_sdpa computed in fp32 (the attn_fp32 lever), outside autocast, which would cast fp32 inputs (a
    4-bit base returns its projections in the fp32 of the residual stream) down to bf16. On the AVX512-BF16
    CPU, SDPA's bf16 backward is slower than its fp32 one: forward + backward at the demo's shapes (9 heads /
    3 KV heads, 64 dims, 50 / 70 / 130 tokens) took 0.77 / 1.21 / 2.29 ms in bf16 and 0.33 / 0.55 / 1.36 ms
    in fp32, casts included. The softmax is more precise, too."""
    import torch
    low = query.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):
        out, w = _packed_sdpa(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(low), w


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    for name, fn in ((PACKED_SDPA, _packed_sdpa), (PACKED_SDPA_FP32, _packed_sdpa_fp32)):
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, sdpa_mask)  # padded (eval/chat) batches still get their mask


def packed_attention(model) -> str:
    """Point the model at per-example attention for padding-free batches, through transformers' attention
    registry; FlashAttention-2's varlen kernel where it is installed. Returns the implementation used."""
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        name = "flash_attention_2"  # reads the same cu_seq_lens; optional, never required
    else:
        _register_attention()
        name = PACKED_SDPA
    try:
        model.set_attn_implementation(name)
    except Exception as e:  # an architecture without the attention interface keeps stock SDPA
        log.info("Attention stays %s (%s).", model.config._attn_implementation, e)
        return model.config._attn_implementation
    return name


# --- lmhead: the loss from the labelled positions' logits only ---------------------------------------------

def _can_keep_logits(trainer) -> bool:
    """The model's forward takes logits_to_keep as an index tensor (transformers' causal LMs do), and the loss
    is the plain token NLL (no custom loss function, label smoothing or MoE aux loss to add)."""
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    params = inspect.signature(type(base).forward).parameters
    return ("logits_to_keep" in params and trainer.compute_loss_func is None and trainer.label_smoother is None
            and not getattr(trainer, "aux_loss_enabled", False) and trainer.args.loss_type == "nll")


def labelled_loss(trainer, model, inputs: dict, num_items_in_batch=None):
    """Mean NLL over the labelled next tokens, computing logits for those positions only.

    TRL's fused head tiles the vocabulary projection on Triton devices only; on the CPU it scores every
    position, runs the vocabulary matmul three times (forward, recompute, grad) and ~25 elementwise passes over
    (tokens x 49k) tiles. Here the model projects just the ~43% assistant positions of the sample data, and
    the loss is log_softmax + gather. Same value as TRL's: the sum over labelled tokens divided by their count
    (or by num_items_in_batch under gradient accumulation). TRL's entropy/accuracy log fields are not computed.
    """
    import torch

    labels = inputs["labels"]
    target = labels[:, 1:]  # position i predicts token i+1
    mask = target != -100
    keep = mask.any(dim=0).nonzero().squeeze(-1)  # padding-free batches are one row: exactly the labelled ones
    rest = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**rest, use_cache=False, logits_to_keep=keep).logits  # (batch, len(keep), vocab)
    sel = mask[:, keep]
    logp = torch.log_softmax(logits[sel].float(), dim=-1).gather(-1, target[:, keep][sel][:, None])
    denom = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = -logp.sum() / denom
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * trainer.accelerator.num_processes  # as TRL/Trainer: DDP averages the gradients
    return loss


# --- dropout: fused LoRA input dropout -----------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _dropout_linear_cls():
    """nn.Linear for LoRA's A matrix with its input dropout fused in (built once; torch imported lazily)."""
    import torch

    class DropoutMatmul(torch.autograd.Function):
        # y = dropout(x) @ A^T, saving x (shared by q/k/v and gate/up, which read the same input) and a bool
        # mask: 1 byte per element instead of torch dropout's float mask + dropped copy (8 bytes).
        @staticmethod
        def forward(ctx, x, weight, p):
            keep = keep_mask(x.shape, p, x.device)
            scale = 1.0 / (1.0 - mask_p(p))
            ctx.save_for_backward(x, keep, weight)
            ctx.scale = scale
            return torch.nn.functional.linear(torch.where(keep, x, 0.0), weight) * scale

        @staticmethod
        def backward(ctx, gy):
            x, keep, weight = ctx.saved_tensors
            gy = gy * ctx.scale  # in the dtype forward computed in: bf16 under autocast, while x and weight may be fp32
            gx = torch.where(keep, gy @ weight.to(gy.dtype), 0.0).to(x.dtype) if ctx.needs_input_grad[0] else None
            gw = None
            if ctx.needs_input_grad[1]:
                xd = torch.where(keep, x, 0.0).to(gy.dtype)
                gw = (gy.reshape(-1, gy.shape[-1]).t() @ xd.reshape(-1, xd.shape[-1])).to(weight.dtype)
            return gx, gw, None

    class DropoutLinear(torch.nn.Linear):
        """A LoRA A matrix that applies its input dropout itself (holds the original weight Parameter)."""

        def __init__(self, linear: torch.nn.Linear, p: float):
            super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
            self.weight = linear.weight  # the same Parameter: optimiser, state dict and saved adapter unchanged
            self.p = p
            self.train(linear.training)

        def forward(self, x):
            if self.training and self.p > 0 and torch.is_grad_enabled():
                return DropoutMatmul.apply(x, self.weight, self.p)
            return super().forward(x)

    return DropoutLinear


MASK_STEPS = 1 << 15  # keep_mask draws 15 random bits per element: p in steps of 1/32768


def _drop_below(p: float) -> int:
    """The 15-bit draws below this are dropped: p rounded to a whole number of 1/MASK_STEPS steps."""
    return round(p * MASK_STEPS)


def mask_p(p: float) -> float:
    """The drop probability keep_mask draws: p rounded to a multiple of 1/32768 (0.05 -> 0.049988)."""
    return _drop_below(p) / MASK_STEPS


def keep_mask(shape, p: float, device=None):
    """A Bernoulli(1 - mask_p(p)) keep mask, 4 elements per 64-bit random draw.

    torch.rand draws a float per element (1.1-1.3 ms for a 280 x 1536 mask here; bernoulli_ 1.6 ms, slow with
    MKL on AMD CPUs). int64 random_() gives 63 random bits per draw (the sign bit is 0), so each of its four
    16-bit lanes has 15 random bits once the top one is masked off: 0.4 ms for the same mask."""
    import math

    import torch
    n = math.prod(shape)
    lanes = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_().view(torch.int16)[:n]
    return (lanes & (MASK_STEPS - 1)).view(shape) >= _drop_below(p)


def _fuse_lora_dropout(model) -> int:
    """Replace each (nn.Dropout, lora_A) pair of peft's LoRA layers by (Identity, DropoutLinear): the same
    distribution (Bernoulli keep mask, 1/(1-p) scale) in one autograd function.

    torch's CPU dropout took ~10 ms per [280 x 576] call here (MKL's Bernoulli on AMD) and kept 8 bytes per
    element for backward; 7 of them per layer were ~half the step time and half the activation memory.
    Entries of peft's ModuleDicts are swapped, as peft itself builds them; parameter names do not change."""
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
                a_mats[name] = cls(lin, float(drop.p))
                drops[name] = torch.nn.Identity()
                n += 1
    return n


# --- own_weights -----------------------------------------------------------------------------------------

def _own_weights(model) -> int:
    """Copy the tensors a 4-bit CPU load left as views of the model file, so its mapping is released.

    transformers loads safetensors zero-copy; after NF4 quantisation only the embeddings and norms still point
    into the file, yet they keep all of it mapped, and every page read while quantising stays in RSS: 415 MB
    of the demo model's 540 MB file for a 113 MB embedding. Measured: RSS 0.97 -> 0.66 GB after load."""
    import gc
    seen: set[int] = set()
    for mod in model.modules():
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            if t is None or id(t) in seen or type(t).__name__ == "Params4bit" or t.device.type != "cpu" \
                    or t.requires_grad:  # LoRA weights are allocated, never views of the file
                continue
            seen.add(id(t))
            t.data = t.data.clone()  # the Parameter object stays, so tied weights stay tied
    gc.collect()
    return len(seen)
