"""Export tab: take the result away — the adapter as a zip with a model card, optionally the merged model, and
GGUF files + Ollama Modelfiles checked by running them in llama-server.

Modules: `layout` (ExportTab, build), `handlers` (plain functions), `wiring` (one function per feature, and `wire`):
the same shape as the other tabs. Siblings import each other by module, never through this package.
"""
