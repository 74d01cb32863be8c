"""Speed levers of the trainer: each one named, applied by `apply`, switched by `train.levers`, measured
(bench/levers.py, figures in bench/RESULTS.md) and tested to compute the same loss and gradients
(tests/test_speed.py). Nothing here replaces a library object's `forward` or `__class__`.

| lever       | what                                                    | CPU: AVX2 box; AVX-512 box          |
|-------------|---------------------------------------------------------|-------------------------------------|
| lmhead      | LM head on the labelled positions only (logits_to_keep) | +26%, -0.27 GB; +40-50%, -0.25 GB   |
| dropout     | LoRA input dropout fused into the A matmul, 1-byte mask | +7%, -0.2 GB; noise, -0.15 GB       |
| own_weights | copy the 4-bit load's last views of the model file      | +12%, -0.4 GB; noise, -0.4 GB       |

None of them has been measured on a GPU yet, so on CUDA "auto" applies none. Packed attention
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
}
MEASURED = {"cpu": ("lmhead", "dropout", "own_weights"), "cuda": ()}  # bench/RESULTS.md


def resolve(names: list[str], device: str) -> set[str]:
    """The levers a run uses: "auto" = those measured faster on this kind of device; [] or "none" = none."""
    out: set[str] = set()
    for n in names:
        if n == "auto":
            out |= set(MEASURED.get(device, ()))
        elif n != "none":
            out.add(n)
    return out


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
    if "lmhead" in levers and _can_keep_logits(trainer):
        trainer.studio_labelled_head = True
        done.append("lmhead")
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


def packed_attention(model) -> str:
    """Point the model at per-example attention for padding-free batches, through transformers' attention
    registry; FlashAttention-2's varlen kernel where it is installed. Returns the implementation used."""
    import importlib.util

    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        name = "flash_attention_2"  # reads the same cu_seq_lens; optional, never required
    else:
        AttentionInterface.register(PACKED_SDPA, _packed_sdpa)
        AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # padded (eval/chat) batches still get their mask
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
            keep = torch.rand(x.shape, device=x.device) >= p  # torch's bernoulli_ is slow with MKL on AMD CPUs
            scale = 1.0 / (1.0 - p)
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
