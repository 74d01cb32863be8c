"""A model's shape from its config.json, without loading a weight: what the memory estimate, the CPU precision
probe's width and the FSDP wrap policy read. Multimodal configs keep the language model in "text_config"."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import DEMO_MODEL
from ..env.paths import demo_dir

# The demo model's shape, for when it has not been downloaded yet (SmolLM2-135M-Instruct config.json).
DEMO_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
              "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True,
              "torch_dtype": "float32"}


def text_config(d: dict) -> dict:
    """The language model's part of a config.json dict: its "text_config" when the top level has no hidden_size
    (multimodal models), with the top level's tie_word_embeddings; else the dict itself."""
    if "hidden_size" not in d and isinstance(d.get("text_config"), dict):
        inner = dict(d["text_config"])
        inner.setdefault("tie_word_embeddings", d.get("tie_word_embeddings", False))
        return inner
    return d


def read_config(model_dir: str | Path) -> dict:
    """config.json of a local model folder as a dict (OSError / ValueError when it cannot be read)."""
    d = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    if not isinstance(d, dict):
        raise ValueError(f"{Path(model_dir) / 'config.json'} is not a JSON object.")
    return d


def hidden_size(model_dir: str | Path | None, default: int = 2048) -> int:
    """The model's width (its text config's hidden_size); `default` (a 1B model's width) when it cannot be read."""
    try:
        return int(text_config(read_config(model_dir))["hidden_size"])
    except (OSError, TypeError, ValueError, KeyError):
        return default


def model_shape(source: str) -> dict:
    """config.json of the model as a dict (the text config for multimodal models); no weights are read."""
    source = (source or "").strip()
    if source == DEMO_MODEL:
        p = demo_dir()
        return text_config(read_config(p)) if (p / "config.json").is_file() else dict(DEMO_SHAPE)
    if Path(source).expanduser().exists():
        from .source import resolve_source
        return text_config(read_config(resolve_source(source)))
    from huggingface_hub import hf_hub_download
    try:
        f = hf_hub_download(source, "config.json", local_files_only=True)
    except Exception:
        from .source import ModelError, hub_reachable
        if not hub_reachable():
            raise ModelError(f"Model '{source}' is not in the local cache and the hub cannot be reached, so its "
                             f"size is unknown.") from None
        f = hf_hub_download(source, "config.json")  # one small file, never the weights
    return text_config(json.loads(Path(f).read_text(encoding="utf-8")))
