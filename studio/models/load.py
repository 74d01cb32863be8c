"""Loading a model for training, chat or export: its tokenizer (with a pad token and a chat template), its compute
dtype, and the weights, 4-bit NF4 through bitsandbytes when the run says so.

torch / transformers are imported inside the functions: `studio --help` must not pay for them.
"""
from __future__ import annotations

from pathlib import Path

from ..config import ModelSettings
from ..env import devices
from ..env.devices import pick_device
from .shape import hidden_size
from .source import ModelError, check_weights
from .templates import CHATML_JINJA, template_text


def pick_dtype(cfg: ModelSettings, device: str, path: Path | None = None):
    """The compute dtype: cfg's, or for "auto" bf16 on GPUs of compute capability 8.0 and later, fp16 below (a T4,
    V100, RTX 20xx: studio.env.devices.cuda_dtype_name), and on the CPU what the measured probe of `cpu_precision`
    decides (bf16 where this CPU runs it natively, fp32 on AVX2-only ones)."""
    import torch
    if cfg.compute_dtype != "auto":
        return getattr(torch, cfg.compute_dtype)
    if str(device).startswith("cuda"):
        index = int(str(device).partition(":")[2] or 0)
        return getattr(torch, devices.cuda_dtype_name(devices.cuda_capability(index)))
    return getattr(torch, cpu_precision(path).dtype)


def cpu_precision(path: Path | None = None):
    """studio.models.precision's measured (and cached) figures at the width of the model in `path`."""
    from .precision import cpu_precision as measured
    return measured(hidden_size(path) if path is not None else 2048)


def load_tokenizer(path: Path, trust_remote_code: bool = False, chat_template: str = "auto"):
    """The tokenizer, with a pad token and the chat template `chat_template` (a ModelSettings.chat_template value)
    chose: set here once, so the data, the trainer, chat and the saved adapter all use the same one."""
    from transformers import AutoTokenizer

    from .catalog import refuse_remote_code
    refuse_remote_code(path, trust_remote_code)  # a model that needs its own code: a sentence naming the field
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return ensure_chat_template(tok, chat_template)


def ensure_chat_template(tok, chat_template: str = "auto"):
    """Give the tokenizer the chat template `chat_template` names (studio.models.templates: a named one or a .jinja
    file's), or under "auto" keep its own and give one without any ChatML. save_pretrained then writes it with the
    adapter, so the exported adapter, merged model and GGUF render chats as training did."""
    text = template_text(chat_template)
    if text is not None:
        tok.chat_template = text
    elif not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_JINJA
    return tok


def load_model(path: Path, cfg: ModelSettings, device: str | None = None, quantize: bool | None = None,
               fsdp: bool = False, dtype=None):
    """Base model for training or chat: 4-bit NF4 through bitsandbytes when cfg says so, else plain. `fsdp`: for
    sharding across GPUs, the 4-bit weights are stored in the compute dtype (FSDP shards one dtype; it must equal
    the one it flattens, or the weights come out silently wrong) and accelerate places them, not a device_map.
    `dtype`: the compute dtype the caller already chose (the trainer measures the CPU once and uses that one choice
    for the arguments and the load alike); None: pick_dtype's."""
    import torch
    from transformers import AutoModelForCausalLM

    check_weights(path)  # a wrong weights file is named here, not as safetensors' "header too large"
    from .catalog import refuse_remote_code
    refuse_remote_code(path, cfg.trust_remote_code)
    device = device or pick_device()
    dtype = dtype if dtype is not None else pick_dtype(cfg, device, path)
    kwargs = dict(dtype=dtype, trust_remote_code=cfg.trust_remote_code, attn_implementation="sdpa",
                  use_safetensors=True)
    if quantize if quantize is not None else cfg.quantization == "nf4":
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype if fsdp else torch.uint8)
        if not fsdp:
            kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ImportError as e:
        raise ModelError(f"4-bit loading needs bitsandbytes ({e}). Install it, or set quantization: none.") from None
    if "device_map" not in kwargs and not fsdp:
        model.to(device)
    return model
