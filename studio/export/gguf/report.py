"""What a GGUF export tells: its stages and agreement figures (GGUFExport), the README section and the tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ADAPTER_GGUF = "adapter-f16.gguf"
LOGS = ("export.log", "llama-server.log")  # kept in the folder for questions, left out of the zip


@dataclass
class Stage:
    name: str
    seconds: float
    file: str | None = None
    size: int | None = None


@dataclass
class GGUFExport:
    folder: Path
    zip: Path | None
    quant: str
    model_file: str
    stages: list[Stage] = field(default_factory=list)
    agreement: list[dict] = field(default_factory=list)          # merged GGUF vs PyTorch, one row per prompt
    adapter_agreement: list[dict] = field(default_factory=list)  # base GGUF + adapter GGUF vs PyTorch
    tokens: int = 32
    prompt_source: str = "held-out"
    template_matches: bool | None = None
    notes: list[str] = field(default_factory=list)  # what the export did besides (work folders of killed ones swept)

    @property
    def summary(self) -> str:
        return agreement_summary(self.quant, self.agreement, self.tokens)

    @property
    def verdict(self) -> str:
        return agreement_verdict(self.quant, self.agreement, self.template_matches)

    @property
    def adapter_summary(self) -> str:
        return agreement_summary("base F16 + adapter GGUF", self.adapter_agreement, self.tokens)

    def files(self) -> dict[str, int]:
        return {p.name: p.stat().st_size for p in sorted(self.folder.iterdir()) if p.is_file()}


def agreement_summary(label: str, rows: list[dict], tokens: int) -> str:
    """"Q8_0: 5/8 answers identical (greedy, up to 32 tokens); the others agree for their first 12-27 tokens"."""
    name = label.upper() if label.islower() else label
    if not rows:
        return f"{name}: not checked"
    same = sum(r["identical"] for r in rows)
    text = f"{name}: {same}/{len(rows)} answers identical (greedy, up to {tokens} tokens)"
    differ = sorted(r["same_tokens"] for r in rows if not r["identical"])
    if differ:
        span = f"{differ[0]}" if differ[0] == differ[-1] else f"{differ[0]}-{differ[-1]}"
        text += f"; the {'other agrees' if len(differ) == 1 else 'others agree'} for their first {span} tokens"
    return text


# Below this many tokens agreeing, a greedy answer parted from the PyTorch one at its start. Q8_0 flips only near-ties
# (measured on the demo model: every divergence where PyTorch's top two logits were within 0.27), which can fall on
# an answer's first words now and then, but not on most answers: half or more parting that early is a fault.
EARLY_TOKENS = 4


def agreement_verdict(quant: str, rows: list[dict], template_matches: bool | None = None) -> str:
    """Whether the agreement figures are fine, in words, and what to try when they are not. Identical greedy answers
    are not expected after quantisation: one near-tie flipped sends the rest of the answer another way. F16 is the
    merged model itself and is held to more: no answer may part in its first tokens."""
    if not rows:
        return "Not checked: no held-out prompt was answered, so nothing says the GGUF behaves like the PyTorch model."
    if template_matches is False:
        return ("Check the chat template: the GGUF's embedded template renders prompts differently from the "
                "tokenizer's, so apps that use it (Ollama, LM Studio) prompt the model differently from training.")
    early = sum(not r["identical"] and r["same_tokens"] < min(EARLY_TOKENS, r["tokens"]) for r in rows)
    q, full = quant.upper(), quant.lower() in ("f16", "bf16", "f32")
    which = f"{early} of {len(rows)} answers differ{'s' if early == 1 else ''} from the first tokens"
    if all(r["identical"] for r in rows):
        return "Fine: every answer is the same token for token as the PyTorch model's."
    if full:
        if early == 0:
            return (f"Fine: every answer starts the same (at least {EARLY_TOKENS} tokens); 16-bit rounding can still "
                    f"flip a near-tie later in an answer.")
        return (f"Check: {which}, which {q} should not do; read export.log in the export folder, and the chat "
                f"template line above.")
    if 2 * early < len(rows):
        return (f"Fine: {q} rounds the weights, so a greedy answer parts ways where two next words were almost "
                f"equally likely; most answers start the same (at least {EARLY_TOKENS} tokens), as a faithful "
                f"conversion does. Identical answers are not expected after quantisation; F16 agrees on nearly all.")
    return (f"Check: {which}, more than {q} rounding usually changes. Try F16 (or Q8_0 instead of a 4-bit type): "
            f"if it agrees, the quantisation costs this model too much; if not, the conversion is at fault.")


def gguf_readme(card: str, result: GGUFExport, base_note: str, n_params: int) -> str:
    model = result.model_file
    rows = "\n".join(f"| {_cell(r['prompt'])} | {_cell(r['pytorch'])} | {_cell(r['gguf'])} | "
                     f"{'yes' if r['identical'] else 'no'} ({r['same_tokens']}/{r['tokens']}) |"
                     for r in result.agreement)
    return f"""{card}
## GGUF (llama.cpp, Ollama, LM Studio)

`{model}` is the adapter merged into the 16-bit base ({n_params / 1e6:,.0f}M parameters) and quantised to
{result.quant.upper()}. `{ADAPTER_GGUF}` is the adapter alone, for a base you already have as a GGUF.

```bash
# Ollama
ollama create my-model -f Modelfile && ollama run my-model
# llama.cpp: chat in the terminal, or a server with an OpenAI-compatible API
llama-cli -m {model} -cnv
llama-server -m {model} --port 8080
# a base you already have as GGUF, plus the adapter (Ollama: Modelfile.adapter)
llama-server -m BASE.gguf --lora {ADAPTER_GGUF}
```
LM Studio: put `{model}` in its models folder (or drag it in); the chat template is embedded in the file.
{base_note}
### Checked by running it
Before this export was handed over, llama-server answered {len(result.agreement)} {result.prompt_source} prompts
greedily (temperature 0), token ids in and out, and so did the merged PyTorch model:

- {result.summary}. {result.verdict}
- {result.adapter_summary}
- The GGUF's embedded chat template renders the prompt {"exactly as" if result.template_matches else "differently from"
  if result.template_matches is False else "(not checked) as"} the tokenizer's own template.

| prompt | PyTorch (merged) | GGUF | same answer (tokens agreeing) |
|---|---|---|---|
{rows}

### Files
{files_table(result)}

### Export time
{stages_table(result)}
"""


def files_table(result: GGUFExport) -> str:
    rows = "\n".join(f"| `{n}` | {fmt_size(s)} |" for n, s in result.files().items() if n not in LOGS)
    return f"| file | size |\n|---|---|\n{rows}"


def stages_table(result: GGUFExport) -> str:
    rows = "\n".join(f"| {s.name} | {s.seconds:.1f} s |" for s in result.stages)
    return f"| stage | time |\n|---|---|\n{rows}"


def fmt_size(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n / 1024:,.1f} KB"


def _cell(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[:n - 1] + "…"
