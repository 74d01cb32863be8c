"""Take a run's result away: the adapter as a zip with a model card (adapter, card), the adapter merged into its base
(merged), or GGUF files for llama.cpp, Ollama and LM Studio checked by running them (gguf, with llama.cpp's tools from
PyPI: llamacpp). `choice` says which of a run's adapters an export means."""
from .adapter import export_adapter_zip
from .card import LOSS_PNG, loss_curve_png, model_card
from .choice import zip_name
from .merged import MERGED, export_merged, merged_model

__all__ = ["export_adapter_zip", "export_merged", "merged_model", "model_card", "loss_curve_png", "zip_name",
           "LOSS_PNG", "MERGED"]
