"""Chat with a run: ONE base model in memory with the runs' adapters on it (engine), what each is called (labels),
scoring short answers (scoring), and one side against the other on the held-out rows (heldout)."""
from ..config import GenSettings
from .engine import MAX_ADAPTERS, ChatEngine, content_text, loaded_base, unload
from .heldout import compare_heldout, save_csv
from .labels import adapter_label, base_path, pair_labels, threads_for_chat
from .scoring import (SHORT_REFERENCE_WORDS, closeness_summary, closer, exact_match, is_short, normalize_answer,
                      token_f1)

__all__ = ["GenSettings", "ChatEngine", "compare_heldout", "save_csv", "threads_for_chat", "unload", "loaded_base",
           "MAX_ADAPTERS", "SHORT_REFERENCE_WORDS", "content_text", "base_path", "adapter_label", "pair_labels",
           "normalize_answer", "exact_match", "token_f1", "is_short", "closer", "closeness_summary"]
