"""Ollama Modelfiles for an exported GGUF: the chat template written out as a Go TEMPLATE where it is one of the
formats with a known Go equivalent (ChatML, Llama 3, Gemma, Mistral: studio.export.gguf.gotemplates; Ollama only
recognises a GGUF's embedded Jinja template when it is one it knows), the end tokens as stops, the run's system
prompt."""
from __future__ import annotations

from ...config import GenSettings, RunConfig
from .gotemplates import CHATML_GO, family

__all__ = ["CHATML_GO", "modelfile", "template_family"]


def template_family(tokenizer) -> tuple[str | None, str]:
    """(the family name: "chatml", "llama3", "gemma" or "mistral", default system prompt or "") when the tokenizer's
    chat template renders a probe conversation exactly as that family's Go template does, else (None, ""): the
    GGUF's embedded template is used."""
    fam, system = family(tokenizer)
    return (fam.name if fam else None), system


def _quote(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile(model_from: str, tokenizer, cfg: RunConfig, gen: GenSettings, adapter: str | None = None,
              name: str | None = None) -> str:
    fam, default_system = family(tokenizer)
    system = (cfg.data.system_prompt or "").strip() or default_system
    stops = []
    for tok in (tokenizer.eos_token, *(fam.stops if fam else ())):
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
    if fam is not None:
        lines += [f"# The chat template is {fam.what}, written out here because Ollama",
                  "# only recognises a GGUF's embedded Jinja template when it matches one it knows.",
                  f"TEMPLATE {_quote(fam.text(tokenizer.eos_token or ''))}"]
    else:
        lines += ["# No TEMPLATE: the chat template is none of ChatML, Llama 3, Gemma or Mistral, and a Jinja",
                  "# template cannot be translated to Ollama's Go templates in general, so Ollama uses the one",
                  "# embedded in the GGUF."]
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER temperature {gen.temperature:g}", f"PARAMETER top_p {gen.top_p:g}"]
    return "\n".join(lines) + "\n"
