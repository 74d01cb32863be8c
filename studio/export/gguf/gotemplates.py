"""Ollama (Go text/template) equivalents of the named chat templates Ollama would not recognise from a GGUF's
embedded Jinja: ChatML, Llama 3, Gemma and Mistral [INST] (studio.models.templates). Each comes with `mirror`, what
the Go template writes for a conversation, in Python: a tokenizer's Jinja template is taken as one of these only
when it renders a probe conversation exactly as the mirror does (`family`), so a TEMPLATE is never written for a
format it does not reproduce.

Go's semantics followed by the mirrors: Ollama passes the system prompt as .System (the Modelfile's SYSTEM or the
conversation's system turn) and every turn in .Messages; the templates skip system turns in the range and write
.System once. BOS is not in a Go template: llama.cpp adds it when it tokenizes (the GGUF's add_bos_token), so the
Jinja render is compared without its leading bos_token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

CHATML_GO = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{- end }}<|im_start|>assistant
"""

LLAMA3_GO = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}\
<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

# Gemma has no system role: the system text heads the first user turn ($sys is emptied once written).
GEMMA_GO = """{{- $sys := .System }}{{- range .Messages }}{{- if eq .Role "user" }}<start_of_turn>user
{{ if $sys }}{{ $sys }}

{{ $sys = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}{{- end }}<start_of_turn>model
"""

# EOS is the tokenizer's end token, written in when the Modelfile is (Mistral's is </s>).
MISTRAL_GO = """{{- $sys := .System }}{{- range .Messages }}{{- if eq .Role "user" }}[INST] {{ if $sys }}{{ $sys }}

{{ $sys = "" }}{{ end }}{{ .Content }} [/INST]{{ else if eq .Role "assistant" }}{{ .Content }}EOS{{ end }}{{- end }}"""


def _system(messages: list[dict]) -> tuple[str, list[dict]]:
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return system, [m for m in messages if m["role"] != "system"]


def _chatml(messages: list[dict], eos: str) -> str:
    system, turns = _system(messages)
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return head + "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns) + \
        "<|im_start|>assistant\n"


def _llama3(messages: list[dict], eos: str) -> str:
    system, turns = _system(messages)
    head = f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>" if system else ""
    return head + "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                          for m in turns) + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _gemma(messages: list[dict], eos: str) -> str:
    system, turns = _system(messages)
    out = []
    for m in turns:
        if m["role"] == "user":
            out.append(f"<start_of_turn>user\n{system + chr(10) * 2 if system else ''}{m['content']}<end_of_turn>\n")
            system = ""
        elif m["role"] == "assistant":
            out.append(f"<start_of_turn>model\n{m['content']}<end_of_turn>\n")
    return "".join(out) + "<start_of_turn>model\n"


def _mistral(messages: list[dict], eos: str) -> str:
    system, turns = _system(messages)
    out = []
    for m in turns:
        if m["role"] == "user":
            out.append(f"[INST] {system + chr(10) * 2 if system else ''}{m['content']} [/INST]")
            system = ""
        elif m["role"] == "assistant":
            out.append(m["content"] + eos)
    return "".join(out)


@dataclass(frozen=True)
class GoTemplate:
    name: str            # studio.models.templates' name of the same format
    what: str            # for the Modelfile's comment
    go: str              # the Go template ("EOS" stands for the tokenizer's end token)
    mirror: Callable[[list[dict], str], str]
    stops: tuple[str, ...]  # besides the tokenizer's eos

    def text(self, eos: str) -> str:
        return self.go.replace("EOS", eos)


FAMILIES = (
    GoTemplate("chatml", "ChatML (<|im_start|>role ... <|im_end|>)", CHATML_GO, _chatml,
               ("<|im_end|>", "<|im_start|>")),
    GoTemplate("llama3", "Llama 3 (<|start_header_id|>role<|end_header_id|> ... <|eot_id|>)", LLAMA3_GO, _llama3,
               ("<|eot_id|>", "<|start_header_id|>")),
    GoTemplate("gemma", "Gemma (<start_of_turn>role ... <end_of_turn>)", GEMMA_GO, _gemma,
               ("<end_of_turn>", "<start_of_turn>")),
    GoTemplate("mistral", "Mistral ([INST] ... [/INST])", MISTRAL_GO, _mistral, ("[INST]",)),
)

# The probe: a system turn, two user turns and an answer between them, rendered up to the generation prompt.
PROBE = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q1"},
         {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]


def family(tokenizer) -> tuple[GoTemplate | None, str]:
    """(the family whose Go template writes what the tokenizer's chat template writes for PROBE, and the default
    system prompt that template adds when a conversation has none, or ""), or (None, "")."""
    from ...data import render_chat
    eos = tokenizer.eos_token or ""
    try:
        jinja = render_chat(tokenizer, PROBE, add_generation_prompt=True)[0]
        bare = render_chat(tokenizer, PROBE[1:2], add_generation_prompt=True)[0]
    except Exception:  # noqa: BLE001 — a template that cannot render the probe is none of these
        return None, ""
    bos = getattr(tokenizer, "bos_token", None) or ""
    for fam in FAMILIES:
        want = fam.mirror(PROBE, eos)
        if jinja != want:
            # a template that writes bos_token (Llama 3, Gemma, Mistral): llama.cpp adds it instead of the Go one
            if not (bos and jinja == bos + want):
                continue
            bare = bare[len(bos):] if bare.startswith(bos) else bare
        # the default system prompt: what stands where a system text would, in the render without one
        head, _, tail = fam.mirror([{"role": "system", "content": "\x00"}, PROBE[1]], eos).partition("\x00")
        if bare != fam.mirror(PROBE[1:2], eos) and bare.startswith(head) and bare.endswith(tail) and \
                len(bare) > len(head) + len(tail):
            return fam, bare[len(head):len(bare) - len(tail)]
        return fam, ""
    return None, ""

