"""Ollama Modelfiles for an exported GGUF: ChatML written out as a Go TEMPLATE (Ollama only recognises a GGUF's
embedded Jinja template when it is one it knows), the end tokens as stops, the run's system prompt."""
from __future__ import annotations

from ...config import GenSettings, RunConfig


# ChatML as an Ollama (Go) template; the same format as a Jinja chat template is
# studio.models.load.CHATML_JINJA.
CHATML_GO = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{- end }}<|im_start|>assistant
"""


def _chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
        "<|im_start|>assistant\n"


def template_family(tokenizer) -> tuple[str | None, str]:
    """("chatml", default system prompt or "") when the tokenizer's chat template renders exactly as ChatML (the
    only family written out as an Ollama TEMPLATE here), else (None, ""): the GGUF's embedded template is used."""
    from ...data import render_chat
    probe = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Q1"},
             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    try:
        if render_chat(tokenizer, probe, add_generation_prompt=True)[0] != _chatml(probe):
            return None, ""
        bare = render_chat(tokenizer, probe[1:2], add_generation_prompt=True)[0]
    except Exception:  # noqa: BLE001 — a template that cannot render the probe is simply not ChatML
        return None, ""
    tail = _chatml(probe[1:2])
    head = bare[:-len(tail)] if bare.endswith(tail) else ""
    if head.startswith("<|im_start|>system\n") and head.endswith("<|im_end|>\n"):
        return "chatml", head[len("<|im_start|>system\n"):-len("<|im_end|>\n")]
    return "chatml", ""


def _quote(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile(model_from: str, tokenizer, cfg: RunConfig, gen: GenSettings, adapter: str | None = None,
              name: str | None = None) -> str:
    family, default_system = template_family(tokenizer)
    system = (cfg.data.system_prompt or "").strip() or default_system
    stops = []
    for tok in (tokenizer.eos_token, "<|im_end|>" if family else None, "<|im_start|>" if family else None):
        if tok and tok not in stops:
            stops.append(tok)
    lines = [f"# Ollama Modelfile for {name or cfg.name}, written by QLoRA Studio.",
             "#   ollama create NAME -f " + ("Modelfile.adapter" if adapter else "Modelfile") + " && ollama run NAME"]
    if adapter:
        lines += ["# FROM: the base model the adapter was trained on, as a GGUF (e.g. made with llama.cpp's",
                  "# convert_hf_to_gguf.py from the base folder); Ollama needs the same base the adapter was tuned on."]
    lines.append(f"FROM {model_from}")
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    if family == "chatml":
        lines += ["# The chat template is ChatML (<|im_start|>role ... <|im_end|>), written out here because Ollama",
                  "# only recognises a GGUF's embedded Jinja template when it matches one it knows.",
                  f"TEMPLATE {_quote(CHATML_GO)}"]
    else:
        lines += ["# No TEMPLATE: the chat template is not ChatML, and a Jinja template cannot be translated to",
                  "# Ollama's Go templates in general, so Ollama uses the template embedded in the GGUF."]
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER temperature {gen.temperature:g}", f"PARAMETER top_p {gen.top_p:g}"]
    return "\n".join(lines) + "\n"
