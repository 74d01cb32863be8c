"""Named chat templates, for base models that ship none or the wrong one for the user's data (`model.chat_template`).

Each is written as the model family's own tokenizer writes it (its chat_template.jinja on the hub), with two changes
that keep an answer findable by the assistant mask (studio.data.tokens): contents are not `| trim`med (Llama 3's
own template trims, so an answer with a leading space would not be found where it was rendered), and the templates
that refuse a system turn (Gemma, Mistral) fold it into the first user turn instead of raising. A model that ships
its own template keeps it under `auto`: transformers has had no default templates since 4.43, so these are only
ever chosen by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config.sections import CHAT_TEMPLATES


@dataclass(frozen=True)
class Template:
    name: str
    label: str       # for the form's list
    jinja: str       # the Jinja chat template
    turn_end: str    # the text that closes an assistant turn; "" where the template writes eos_token there


# ChatML as SmolLM2/Qwen write it; given to tokenizers that ship none under `auto`.
# (The Ollama Modelfile's Go template of the same format is studio.export.gguf.gotemplates.)
CHATML_JINJA = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA3_JINJA = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Gemma has no system role: Gemma 3's own template puts the system text at the head of the first user turn.
GEMMA_JINJA = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.sys = message['content'] + '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ ns.sys if message['role'] == 'user' else '' }}{{ message['content'] }}<end_of_turn>\n"
    "{% set ns.sys = '' %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Mistral's [INST] format (v0.1-v0.2 and Mixtral); the system text heads the first user turn, as in Mistral 7B v0.1.
MISTRAL_JINJA = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.sys = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}[INST] {{ ns.sys }}{{ message['content'] }} [/INST]{% set ns.sys = '' %}"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

PHI3_JINJA = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

PHI4_JINJA = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}<|im_sep|>{{ message['content'] }}<|im_end|>"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant<|im_sep|>{% endif %}"
)

# Stanford Alpaca's prompt as plain text; eos_token ends each answer, so the model learns to stop.
ALPACA_JINJA = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% else %}### Response:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)

TEMPLATES = {t.name: t for t in (
    Template("chatml", "ChatML (Qwen, SmolLM, Hermes)", CHATML_JINJA, "<|im_end|>"),
    Template("llama3", "Llama 3 / 3.1 / 3.2", LLAMA3_JINJA, "<|eot_id|>"),
    Template("gemma", "Gemma 2 / 3", GEMMA_JINJA, "<end_of_turn>"),
    Template("mistral", "Mistral [INST] (7B v0.1-v0.2, Mixtral)", MISTRAL_JINJA, ""),
    Template("phi3", "Phi-3 / 3.5 / 4-mini", PHI3_JINJA, "<|end|>"),
    Template("phi4", "Phi-4 (14B)", PHI4_JINJA, "<|im_end|>"),
    Template("alpaca", "Alpaca-style plain text (### Instruction / ### Response)", ALPACA_JINJA, ""),
)}
assert set(TEMPLATES) == set(CHAT_TEMPLATES) - {"auto"}, "studio.config.sections.CHAT_TEMPLATES names these"


def template_text(choice: str) -> str | None:
    """The Jinja text `choice` (a ModelSettings.chat_template value) stands for: None for "auto" (the tokenizer's
    own), a named template's, or a .jinja file's contents. ValueError naming model.chat_template when the file
    cannot be read (the config checked it when it was made; it may have gone since)."""
    choice = (choice or "auto").strip()
    if choice == "auto":
        return None
    if choice in TEMPLATES:
        return TEMPLATES[choice].jinja
    try:
        return Path(choice).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeError) as e:
        raise ValueError(f"The chat template file {choice[:200]} (model.chat_template) cannot be read "
                         f"({getattr(e, 'strerror', None) or e}): put it back, or choose a named template.") from None


def end_of_turn(tokenizer, choice: str) -> str:
    """What closes an assistant turn under `choice` with this tokenizer (the named template's marker, else eos)."""
    t = TEMPLATES.get((choice or "").strip())
    return (t.turn_end if t is not None and t.turn_end else tokenizer.eos_token) or ""
