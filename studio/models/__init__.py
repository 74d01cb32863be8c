"""Models: where one comes from (source: the demo, a local folder, a hub id), its shape from config.json (shape),
loading it with its tokenizer and compute dtype (load), the CPU precision probe behind `compute_dtype: auto`
(precision), and whether a safetensors file is one, from its header (weights); which models there are (catalog: this
machine's and a popular list), whether each fits a GPU card (fit) and a hub download's progress (progress)."""
from ..config import DEMO_MODEL
from .load import CHATML_JINJA, cpu_precision, ensure_chat_template, load_model, load_tokenizer, pick_dtype
from .shape import DEMO_SHAPE, hidden_size, model_shape, read_config, text_config
from .source import DEMO_GGUF, DEMO_PACKAGE, ModelError, check_weights, fetch_demo, hub_reachable, resolve_source
from .weights import safetensors_problem
from .catalog import ModelInfo, on_this_machine, popular, refuse_remote_code, remote_code_problem
from .fit import Fit, fit_table
from .progress import DownloadWatch

__all__ = ["DEMO_MODEL", "CHATML_JINJA", "cpu_precision", "ensure_chat_template", "load_model", "load_tokenizer",
           "pick_dtype", "DEMO_SHAPE", "hidden_size", "model_shape", "read_config", "text_config", "DEMO_GGUF",
           "DEMO_PACKAGE", "ModelError", "check_weights", "fetch_demo", "hub_reachable", "resolve_source",
           "safetensors_problem", "ModelInfo", "on_this_machine", "popular", "refuse_remote_code",
           "remote_code_problem", "Fit", "fit_table", "DownloadWatch"]
