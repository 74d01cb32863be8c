"""Models: where one comes from (source: the demo, a local folder, a hub id), its shape from config.json (shape),
loading it with its tokenizer and compute dtype (load), the CPU precision probe behind `compute_dtype: auto`
(precision), and whether a safetensors file is one, from its header (weights)."""
from ..config import DEMO_MODEL
from .load import CHATML_JINJA, cpu_precision, ensure_chat_template, load_model, load_tokenizer, pick_dtype
from .shape import DEMO_SHAPE, hidden_size, model_shape, read_config, text_config
from .source import DEMO_GGUF, DEMO_PACKAGE, ModelError, check_weights, fetch_demo, hub_reachable, resolve_source
from .weights import safetensors_problem

__all__ = ["DEMO_MODEL", "CHATML_JINJA", "cpu_precision", "ensure_chat_template", "load_model", "load_tokenizer",
           "pick_dtype", "DEMO_SHAPE", "hidden_size", "model_shape", "read_config", "text_config", "DEMO_GGUF",
           "DEMO_PACKAGE", "ModelError", "check_weights", "fetch_demo", "hub_reachable", "resolve_source",
           "safetensors_problem"]
