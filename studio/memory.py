"""Peak memory of a run, estimated before it starts from the model's config.json and the run config.

Cheap by design: no weights are loaded and torch is imported only where it must be: torch.cuda when torch is
already imported or the device is "cuda", and on the CPU with compute dtype auto for the precision probe's
choice (studio.models.precision, measured and kept per machine). Checked against measured peaks in bench/RESULTS.md:
peak RSS of the studio trainer on CPU (the demo model), and, on a lent GPU, peak allocated VRAM.

What is counted (bytes; `b` = bytes per activation element: 4 in fp32, 2 in bf16/fp16, 3.1 for a 4-bit
base under bf16/fp16 autocast, whose residual stream stays fp32):
- weights: NF4 = 0.5 byte per linear weight + 0.0156 for its 8-bit block scales (double quant; 0.0625
  without); embeddings, norms and the LM head in fp32 (peft's k-bit preparation upcasts them).
  quantization none: all in the compute dtype.
- lora: r x (in + out) per adapted linear; fp32 weight + grad + two AdamW moments = 16 bytes per parameter
  (8-bit optimisers: 6).
- activations, per token and layer, as the studio trainer keeps them (padding-free rows, fused LoRA
  dropout with a 1-byte mask): residual + norm outputs 4h, attention q,k,v,out + o input 3q + 2kv, MLP
  gate, silu, up, down input 4m, LoRA rank tensors 14r, all times b, + the dropout masks (5h + q + m) bytes.
  Gradient checkpointing keeps h x b per layer and one layer's worth while recomputing.
- lm_head: logits, log-softmax and two temporaries of (labelled tokens x vocab) in fp32, with about half
  of a chat row's tokens labelled (43% in the sample data).
- runtime: Python + torch + transformers + peft + TRL loaded (CPU: 0.47 GB RSS measured, with the tokenizer
  and the run's small tensors), CUDA context on GPU.
- overhead (CPU): ~0.16 GB of per-step workspace (dequantised weight tiles, the LM head's views) plus the
  free heap pages glibc keeps at the peak, measured at 0.65-0.7x the step's transient memory (batch 1, 4, 16
  on the demo model); on GPU the caching allocator's reserve.
On CPU the whole-process peak can be the load instead: NF4 quantisation reads the full-precision file
through a memory map, so its pages count while the model loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import stages
from .config import RunConfig
from .env import devices
from .env.devices import default_device, gpus_present
from .models.shape import DEMO_SHAPE, model_shape

GB = 1e9
# Measured on the 2-core CPU box (bench/RESULTS.md): RSS after importing torch, transformers, peft, trl,
# datasets with the tokenizer loaded; and glibc's free-but-resident heap at the training peak.
CPU_RUNTIME_GB = 0.47
CPU_WORKSPACE_GB = 0.16
CPU_HEAP_SLACK = 0.65  # glibc keeps this share of a step's transient memory as free-but-resident heap
CUDA_CONTEXT_GB = 0.55    # CUDA context + cuBLAS workspace: in nvidia-smi, not in torch's allocated bytes
CUDA_ALLOCATOR_SLACK = 0.10  # caching allocator's reserved-but-free share at the peak
# Share of a row's tokens that carry a label (assistant answers): 43% in the sample data.
LABEL_SHARE = 0.5
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "float64": 8}


@dataclass
class MemoryEstimate:
    total_gb: float
    breakdown: dict[str, float]  # GB per part; the parts add up to total_gb
    device: str                  # "cpu" or "cuda"
    available_gb: float | None   # free RAM, or the GPU's total memory; None when unknown
    fits: bool
    warning: str = ""            # "" when fine
    tokens_per_batch: int = 0    # the micro-batch size in tokens the activations were sized for
    notes: list[str] = field(default_factory=list)
    processes: int = 1           # train.devices resolved: on GPUs the figures are per GPU, on CPU for all

    def summary(self) -> str:
        where = "GPU memory" if self.device == "cuda" else "RAM"
        if self.device == "cuda" and self.processes > 1:
            where = f"GPU memory per GPU ({self.processes} GPUs)"
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.breakdown.items() if v >= 0.005)
        avail = f" of {self.available_gb:.1f} GB available" if self.available_gb is not None else ""
        verdict = "fits" if self.fits else "may not fit"
        text = f"~{self.total_gb:.2f} GB peak {where} on {self.device}{avail}: {verdict} ({parts} GB)"
        return text + (f". {self.warning}" if self.warning else "")


# --- model shape ---------------------------------------------------------------------------------

def _shape(mc) -> dict:
    g = (lambda k, default=None: mc.get(k, default)) if isinstance(mc, dict) else \
        (lambda k, default=None: getattr(mc, k, default))
    h = int(g("hidden_size"))
    nh = int(g("num_attention_heads"))
    hd = int(g("head_dim") or h // nh)
    m = int(g("intermediate_size") or 4 * h)
    experts = int(g("num_local_experts") or g("num_experts") or 1)
    if experts > 1:  # MoE: every expert's weights are resident; activations follow the routed experts
        m_res = int(g("moe_intermediate_size") or m) * experts
        m_act = int(g("moe_intermediate_size") or m) * int(g("num_experts_per_tok") or 2)
    else:
        m_res = m_act = m
    dt = str(g("torch_dtype") or g("dtype") or "float32").replace("torch.", "")
    return {"h": h, "L": int(g("num_hidden_layers")), "nh": nh, "nkv": int(g("num_key_value_heads") or nh),
            "hd": hd, "m": m_act, "m_resident": m_res, "V": int(g("vocab_size")),
            "tied": bool(g("tie_word_embeddings", False)), "file_bytes": DTYPE_BYTES.get(dt, 2)}


def param_counts(mc) -> dict:
    """Parameters by kind: 'linear' (what NF4 quantises), 'embed', 'head', 'norm'."""
    s = _shape(mc)
    h, L, q, kv = s["h"], s["L"], s["nh"] * s["hd"], s["nkv"] * s["hd"]
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * s["m_resident"]
    return {"linear": L * per_layer, "embed": s["V"] * h, "head": 0 if s["tied"] else s["V"] * h,
            "norm": (2 * L + 1) * h}


def lora_params(mc, r: int, targets: list[str]) -> int:
    s = _shape(mc)
    h, q, kv, m = s["h"], s["nh"] * s["hd"], s["nkv"] * s["hd"], s["m_resident"]
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, m), "up_proj": (h, m), "down_proj": (m, h)}
    names = dims if targets == ["all-linear"] else {t: dims[t] for t in targets if t in dims}
    if not names and targets != ["all-linear"]:  # unfamiliar layer names: assume all linear layers
        names = dims
    return s["L"] * sum(r * (i + o) for i, o in names.values())


# --- the estimate -------------------------------------------------------------------------------

def compute_dtype(cfg: RunConfig, device: str, width: int) -> str:
    """The dtype a run of cfg computes in on `device` ("cpu"/"cuda"), as studio.models.pick_dtype decides it (without
    importing torch when the CPU probe's answer is cached)."""
    cd = cfg.model.compute_dtype
    if cd != "auto":
        return cd
    if device == "cuda":
        cap = _capability()
        # no GPU here (a fit table for cards elsewhere): a card of today, Ampere or later, computes in bf16
        return "bfloat16" if cap is None else devices.cuda_dtype_name(cap)
    from .models.precision import cpu_precision
    return cpu_precision(width, cfg.train.threads if cfg.train.threads > 0 else None).dtype


def estimate(cfg: RunConfig, device: str | None = None, model_config=None,
             row_tokens: float | None = None) -> MemoryEstimate:
    """Peak memory of training `cfg`: RSS on CPU, VRAM on CUDA.

    `model_config`: a transformers config or dict (default: the model's config.json). `row_tokens`: the length
    of the longer rows in tokens, e.g. the p95 from `studio.data.token_stats` (default: guessed from the data
    file, else max_length, the worst case)."""
    device = device or default_device()
    device = "cuda" if str(device).startswith("cuda") else "cpu"
    mc = model_config if model_config is not None else model_shape(cfg.model.source)
    s = _shape(mc)
    t = cfg.train
    notes: list[str] = []

    # compute dtype: what studio.models.pick_dtype chooses (on the CPU, auto = the measured probe's choice).
    # Bytes per activation element: 2 in bf16/fp16, but a 4-bit base under autocast keeps the residual stream
    # in fp32 (peft's k-bit preparation upcasts embeddings and norms, bitsandbytes returns each projection in its
    # input's dtype): one demo step saved 372 MB for backward against 481 MB in fp32, i.e. 3.1 bytes per element
    dtype = compute_dtype(cfg, device, s["h"])
    low = dtype != "float32"
    b = (3.1 if cfg.model.quantization == "nf4" else 2) if low else 4

    # weights
    pc = param_counts(mc)
    other = pc["embed"] + pc["head"] + pc["norm"]
    if cfg.model.quantization == "nf4":
        per = 0.5 + (1 / 64 + 4 / (64 * 256) if cfg.model.double_quant else 4 / 64)
        # peft's prepare_model_for_kbit_training upcasts them to fp32 (+2.1 GB at Llama 3's 128k vocabulary);
        # not under FSDP, which skips the preparation (studio.train.recipe.setup_model)
        n_gpus = t.devices if t.devices > 0 else (gpus_present() if device == "cuda" else 1) or 1
        sharded = device == "cuda" and t.distributed == "fsdp" and n_gpus > 1
        weights = pc["linear"] * per + other * (2 if sharded and low else 4)
    else:
        weights = (pc["linear"] + other) * b

    # LoRA weights, gradients and optimiser state (fp32 master + grad + 2 moments)
    n_lora = lora_params(mc, cfg.lora.r, cfg.lora.target_modules)
    stage = stages.get(t.stage)
    seq = stage.sequence_tokens(t, _row_tokens(cfg, row_tokens))
    tokens = int(t.batch_size * seq)
    activations = _activations(cfg, s, b, tokens, device, notes) + _attention_scores(cfg, s, dtype, seq, device,
                                                                                      notes)
    parts = {"weights": weights, "lora": n_lora * 8, "optimizer": n_lora * (2 if "8bit" in t.optimizer else 8),
             "activations": activations}
    if stage.generates:
        # the sampled answers' KV cache (every answer of a step at once), held while generating, not with the
        # activations: counted where it is the larger of the two
        kv_cache = t.batch_size * t.grad_accum * seq * s["L"] * 2 * s["nkv"] * s["hd"] * b
        if kv_cache > activations:
            parts["generation"] = kv_cache - activations
            notes.append("the answers' KV cache while sampling is the peak")
    if device == "cpu":
        if t.gradient_checkpointing:
            notes.append("with checkpointing on the CPU the peak varies: the demo model measured 1.27-1.87 GB in three "
                         "runs against 1.23 GB estimated")
        parts["runtime"] = CPU_RUNTIME_GB * GB
        parts["overhead"] = CPU_WORKSPACE_GB * GB + CPU_HEAP_SLACK * (activations + CPU_WORKSPACE_GB * GB)
        train_peak = sum(parts.values())
        if cfg.model.quantization == "nf4":
            # while loading, the full-precision file is read through a memory map next to the 4-bit copy
            load_peak = CPU_RUNTIME_GB * GB + (pc["linear"] + other) * s["file_bytes"] + weights
            if load_peak > train_peak:
                parts["loading"] = load_peak - train_peak
                notes.append("the peak is while the model loads and is quantised")
    else:
        parts["overhead"] = CUDA_CONTEXT_GB * GB + CUDA_ALLOCATOR_SLACK * (activations + weights)
        notes.append("unmeasured on a GPU: bench/gpu_qlora.py has not checked these figures on one yet")
    n = t.devices if t.devices > 0 else (gpus_present() if device == "cuda" else 1) or 1
    if n > 1:
        _spread(parts, n, device, t.distributed, weights, n_lora, s["L"], notes)
    total = sum(parts.values())
    available, held = _available_gb(device)
    fits = available is None or total / GB <= available
    return MemoryEstimate(total_gb=round(total / GB, 3), breakdown={k: round(v / GB, 3) for k, v in parts.items()},
                          device=device, available_gb=None if available is None else round(available, 2),
                          fits=fits, warning=_warning(cfg, device, total, activations, available, held),
                          tokens_per_batch=tokens, notes=notes, processes=n)


def _activations(cfg: RunConfig, s: dict, b: float, tokens: int, device: str, notes: list[str]) -> float:
    """Bytes saved for backward in one micro-batch of `tokens` tokens (padding-free rows when packing is on, else
    padded to the longest row), the LM head's logits included, times the stage's sequences per row."""
    t, lc = cfg.train, cfg.lora
    h, L, V = s["h"], s["L"], s["V"]
    q, kv, m = s["nh"] * s["hd"], s["nkv"] * s["hd"], s["m"]
    if not t.packing:
        notes.append("packing off: the longest row of each batch sets its width")
    drop_mask = (5 * h + q + m) if lc.dropout > 0 else 0
    per_layer = b * (4 * h + 3 * q + 2 * kv + 4 * m + 14 * lc.r) + drop_mask
    if t.gradient_checkpointing:
        act = tokens * (L * h * b + per_layer)
    else:
        act = tokens * L * per_layer
    if "lmhead" in _levers(cfg, device):
        # logits of the labelled positions only (about half a chat row's tokens), in fp32: the logits, the
        # log-softmax and two temporaries of the loss (measured on the CPU, bench/RESULTS.md)
        head = tokens * LABEL_SHARE * V * 4 * 4
    else:
        # every position's logits, as transformers' causal-LM loss computes them: the logits in the compute dtype
        # (2 bytes; 4 in fp32), their fp32 upcast, the log-softmax and its gradient (4 bytes each). At 28k tokens
        # and Llama 3's 128k vocabulary that is ~51 GB: what made the published HF figures for long rows 2x ours
        head = tokens * V * ((2 if b < 4 else 4) + 3 * 4)
    stage = stages.get(t.stage)
    if stage.memory_note:
        notes.append(stage.memory_note)
    return (act + head) * stage.activation_factor


def _levers(cfg: RunConfig, device: str) -> set[str]:
    from .train import speed  # names only: speed imports no torch
    return speed.resolve(cfg.train.levers, device)


def _attention_scores(cfg: RunConfig, s: dict, dtype: str, seq: float, device: str, notes: list[str]) -> float:
    """Bytes of the attention score matrices SDPA's math kernel keeps where no memory-efficient kernel applies:
    bf16 on a GPU below compute capability 8.0 (a T4, V100, RTX 20xx), chosen by hand there (auto picks fp16).
    Scores and their softmax, (rows x heads x T x T) x 2 bytes each, per layer kept for backward."""
    cap = _capability() if device == "cuda" else None
    if dtype != "bfloat16" or cap is None or devices.native_bf16(cap):
        return 0.0
    t = cfg.train
    layers = 1 if t.gradient_checkpointing else s["L"]
    notes.append(f"bf16 on a GPU of compute capability {cap[0]}.{cap[1]}: attention runs SDPA's math kernel, whose "
                 f"T x T scores are counted; compute dtype auto (fp16 there) avoids them")
    return t.batch_size * s["nh"] * seq * seq * 2 * 2 * layers


def _capability() -> tuple[int, int] | None:
    try:
        return devices.cuda_capability()
    except Exception:  # a broken CUDA install answers like no GPU
        return None


def _warning(cfg: RunConfig, device: str, total: float, activations: float, available: float | None,
             held: str = "") -> str:
    """"" when it fits with room; else what to change, the levers that matter most first. `held`: what else holds
    the GPU's memory (said when it does not fit)."""
    t = cfg.train
    if available is None:
        return ""
    if total / GB > available:
        fixes = []
        if cfg.model.quantization != "nf4":
            fixes.append("use 4-bit quantisation (nf4)")
        if not t.gradient_checkpointing and activations > 0.25 * total:
            fixes.append("turn on gradient checkpointing")
        if t.batch_size > 1 and activations > 0.25 * total:
            fixes.append("lower the batch size (raise gradient accumulation to keep the effective batch)")
        if t.max_length > 512 and activations > 0.25 * total:
            fixes.append("lower Max sequence length")
        if not fixes:
            fixes.append("choose a smaller model")
        where = "GPU memory" if device == "cuda" else "free RAM"
        return (f"Needs about {total / GB:.1f} GB but only {available:.1f} GB of {where} is available"
                + (f" ({held})" if held else "") + ": " + "; ".join(fixes) + ".")
    if total / GB > 0.85 * available:
        return f"Close to the {available:.1f} GB available; other programs may push it over."
    return ""


def _spread(parts: dict, n: int, device: str, strategy: str, weights: float, n_lora: int, layers: int,
            notes: list[str]) -> None:
    """Several processes. GPUs: figures per GPU. DDP keeps a whole copy on each GPU plus its gradient buckets
    (the LoRA gradients once more, fp32); FSDP shards the 4-bit weights, LoRA and optimiser state n ways and
    gathers one layer at a time. CPU: n processes on this one machine, each with its own copy: n times it all."""
    if device != "cuda":
        for k in parts:
            parts[k] *= n
        notes.append(f"{n} processes on this machine, each with its own copy of the model")
    elif strategy == "fsdp":
        parts["weights"] = weights / n + weights / max(1, layers)
        parts["lora"] /= n
        parts["optimizer"] /= n
        notes.append(f"per GPU: FSDP shards the weights, LoRA and optimiser state over {n} GPUs (FSDP is untested: "
                     f"it has not run on GPUs yet)")
    else:
        parts["ddp buckets"] = n_lora * 4
        notes.append(f"per GPU: DDP keeps the whole model on each of the {n} GPUs")


def _row_tokens(cfg: RunConfig, row_tokens: float | None) -> float:
    """Tokens in a long row (the 95th percentile; the longest with packing off): given, else guessed from the data
    file's characters, else max_length."""
    if row_tokens:
        return float(row_tokens)
    path = Path(cfg.data.path) if cfg.data.path else None
    try:
        if path is None or not path.is_file() or path.stat().st_size > 50e6:
            return float(cfg.train.max_length)
        from . import data
        rep = data.read_examples(path, cfg.data.format, cfg.data.columns, cfg.data.system_prompt)
        lengths = sorted(_guess_tokens(ex) for ex in rep.examples)
        if not lengths:
            return float(cfg.train.max_length)
        # packing off: rows are padded to the longest of their batch, and the trainer's length-grouped sampler puts
        # the longest rows in one batch (the first, so an OOM comes at once): the longest row sizes the peak
        return float(lengths[-1] if not cfg.train.packing else lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))])
    except Exception:  # an unreadable file is reported by the data tab; here it only means "unknown"
        return float(cfg.train.max_length)


def _guess_tokens(messages: list[dict]) -> float:
    # ~4 characters per token for English under Llama-family BPE vocabularies; ~5 template tokens per turn
    # (<|im_start|>role\n ... <|im_end|>\n) and ~16 for a default system prompt when the row has none.
    chars = sum(len(m.get("content", "")) for m in messages)
    sys_default = 0 if any(m.get("role") == "system" for m in messages) else 16
    return chars / 4 + 5 * len(messages) + sys_default


def _available_gb(device: str) -> tuple[float | None, str]:
    """(GB a run can have, what holds the rest of a GPU). On a GPU: what is free now plus this process's own
    reserve (the Chat tab's model, which Start frees before a run), not the card's total: another program's
    allocations stay. On the CPU: available RAM."""
    if device == "cuda":
        try:
            mem = devices.gpu_memory()
        except Exception:
            return None, ""
        if mem is None:
            return None, ""
        free, total, here = mem
        others = max(0, total - free - here)
        held = f"other programs hold {others / GB:.1f} GB of the card's {total / GB:.1f} GB" if others > 0.5 * GB \
            else ""
        return (free + here) / GB, held
    try:
        import psutil
        return psutil.virtual_memory().available / GB, ""
    except Exception:
        return None, ""


__all__ = ["MemoryEstimate", "estimate", "model_shape", "param_counts", "lora_params", "DEMO_SHAPE"]
