"""GGUF export for llama.cpp, Ollama and LM Studio: the pipeline (merge, convert, quantise, check in llama-server,
package), the check itself (verify), the Ollama Modelfiles (ollama) and what the export tells (report)."""
from .ollama import modelfile, template_family
from .pipeline import ZIP_MAX_BYTES, export_gguf, gguf_name, pick_quant
from .report import ADAPTER_GGUF, GGUFExport, Stage, agreement_summary

__all__ = ["export_gguf", "GGUFExport", "Stage", "modelfile", "template_family", "gguf_name", "pick_quant",
           "agreement_summary", "ADAPTER_GGUF", "ZIP_MAX_BYTES"]
