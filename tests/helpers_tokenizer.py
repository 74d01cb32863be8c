"""A real, tiny, offline tokenizer for tests: byte-level BPE trained in memory, with SmolLM2's ChatML.

Byte-level means any text round-trips exactly (no unknown tokens), so tests can decode what was
masked and compare strings. Training on ~300 lines takes well under a second.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "datasets" / "pirate_qa.jsonl"
_FALLBACK = [
    "Arr, matey! The capital of France be Paris. Yo-ho-ho!",
    "What is the boiling point of water? It is 100 degrees Celsius at sea level.",
    "def add(a, b):\n    return a + b  # numbers 0123456789",
    "You are a helpful assistant. The quick brown fox jumps over the lazy dog.",
]


def _corpus(limit: int = 300) -> list[str]:
    lines = list(_FALLBACK)
    if _SAMPLE.exists():
        for line in _SAMPLE.read_text(encoding="utf-8").splitlines()[:limit]:
            lines += [m["content"] for m in json.loads(line)["messages"]]
    return lines


@lru_cache(maxsize=None)
def make_test_tokenizer(vocab_size: int = 1000):
    """A transformers PreTrainedTokenizerFast (ChatML template, eos <|im_end|>, pad <|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 bos_token="<|im_start|>", unk_token="<|endoftext|>")
    hf.chat_template = CHATML
    return hf
