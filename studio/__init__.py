"""QLoRA Studio: fine-tune open-weight LLMs on your own data with QLoRA."""
__version__ = "0.1.0"
