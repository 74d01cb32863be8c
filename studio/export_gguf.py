"""GGUF export: the tuned model for llama.cpp, Ollama and LM Studio, proven by running it.

One call builds, in a hidden folder that is renamed into place only when everything passed:
  <name>-<type>.gguf   the adapter merged into the 16-bit base, converted and quantised (Q8_0, Q4_K_M, ...)
  adapter-f16.gguf     the adapter alone, for a base kept in Ollama / llama.cpp (--lora, ADAPTER)
  Modelfile            Ollama: FROM the merged GGUF; Modelfile.adapter: FROM a base GGUF + ADAPTER
  README.md            the model card plus how to run it, and the agreement figures below
  gguf-report.json     stages (seconds, sizes) and the agreement table
Before it is handed over, llama-server answers the same prompts greedily as the merged PyTorch model did, token
ids in and out, and the first N tokens are compared; the adapter GGUF is checked the same way on a 16-bit base.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import llamacpp
from .config import GenSettings, RunConfig
from .export import (LOSS_PNG, _adapter_dir, _which, loss_curve_png, merged_model, model_card, private_dir,
                     zip_name)
from .runs import CONFIG, DATASET, EVAL_SET, EXPORTS, run_name, slug

REPORT = "gguf-report.json"
ADAPTER_GGUF = "adapter-f16.gguf"
ZIP_MAX_BYTES = int(os.environ.get("STUDIO_GGUF_ZIP_MAX", 4 * 2**30))  # above this the export stays a folder
LOGS = ("export.log", "llama-server.log")  # kept in the folder for questions, left out of the zip
BIG_MODEL = 1_000_000_000  # "auto": Q4_K_M from 1B parameters, Q8_0 below (small models suffer more from 4 bits)

Progress = Callable[[float, str], None]


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

    @property
    def summary(self) -> str:
        return agreement_summary(self.quant, self.agreement, self.tokens)

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


def gguf_name(run_dir: Path, checkpoint: str | None, quant: str) -> str:
    """As the adapter zip's name, with -gguf-<type> for -adapter: <run>-gguf-q8_0[-stepN]-<date>.zip."""
    return zip_name(run_dir, checkpoint).replace("-adapter", f"-gguf-{quant}", 1)


def pick_quant(quant: str | None, n_params: int) -> str:
    q = (quant or "auto").lower().replace("-", "_")
    if q == "auto":
        return "q4_k_m" if n_params >= BIG_MODEL else "q8_0"
    if q not in llamacpp.FTYPES:
        raise ValueError(f"Unknown GGUF type {quant!r}: choose auto or one of {', '.join(llamacpp.FTYPES)}.")
    return q


# --- prompts and greedy references ----------------------------------------------------------------

def verify_prompts(run_dir: Path, tokenizer, cfg: RunConfig, n: int) -> tuple[list[list[dict]], str]:
    """Up to n conversations to check on, each ending before an assistant turn: the run's held-out rows, else
    (no held-out set) its first training rows. Returns (conversations, "held-out" | "training")."""
    from .data import read_jsonl

    for name, source in ((EVAL_SET, "held-out"), (DATASET, "training")):
        path = run_dir / name
        if not path.is_file():
            continue
        convs = []
        for msgs in read_jsonl(path):
            turns = [{"role": m["role"], "content": str(m.get("content") or "")} for m in msgs]
            last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
            prompt = turns[:last] if last else turns
            if not any(t["role"] == "user" for t in prompt):
                continue
            sp = (cfg.data.system_prompt or "").strip()
            if sp and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": sp}, *prompt]
            convs.append(prompt)
            if len(convs) >= n:
                break
        if convs:
            return convs, source
    raise ValueError(f"{run_dir} has neither held-out nor training rows to check the GGUF on.")


def encode(tokenizer, messages: list[dict]) -> list[int]:
    from .data import render_chat
    text, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _eos_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def greedy(model, prompt_ids: list[int], n: int, eos: set[int]) -> list[int]:
    import torch
    ids = torch.tensor([prompt_ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=sorted(eos) or None, pad_token_id=sorted(eos)[0] if eos else None)
    return _until_eos(out[0, len(prompt_ids):].tolist(), eos)


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


def compare(convs: list[list[dict]], ref: list[list[int]], got: list[list[int]], tokenizer, n: int) -> list[dict]:
    rows = []
    for msgs, a, b in zip(convs, ref, got):
        a, b = a[:n], b[:n]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        user = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
        rows.append({"prompt": user, "pytorch": tokenizer.decode(a, skip_special_tokens=True),
                     "gguf": tokenizer.decode(b, skip_special_tokens=True), "same_tokens": same,
                     "tokens": max(len(a), len(b)), "identical": a == b})
    return rows


# --- Ollama Modelfile -----------------------------------------------------------------------------

CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
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
    from .data import render_chat
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
                  f"TEMPLATE {_quote(CHATML_TEMPLATE)}"]
    else:
        lines += ["# No TEMPLATE: the chat template is not ChatML, and a Jinja template cannot be translated to",
                  "# Ollama's Go templates in general, so Ollama uses the template embedded in the GGUF."]
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER temperature {gen.temperature:g}", f"PARAMETER top_p {gen.top_p:g}"]
    return "\n".join(lines) + "\n"


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

- {result.summary}
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


# --- the export -----------------------------------------------------------------------------------

def _check_space(where: Path, base_dir: Path) -> None:
    weights = sum(p.stat().st_size for p in base_dir.glob("*.safetensors")) or \
        sum(p.stat().st_size for p in base_dir.glob("*.bin"))
    need = 4 * weights  # merged checkpoint + 16-bit base GGUF + quantised GGUF + zip, each at most the base's size
    existing = next(p for p in (where, *where.parents) if p.exists())  # nothing is created before the check
    free = shutil.disk_usage(existing).free
    if weights and free < need:
        raise llamacpp.GGUFError(f"Not enough disk space for the GGUF export in {where}: it needs about "
                                 f"{need / 2**30:.1f} GB while working and {free / 2**30:.1f} GB are free. Free some "
                                 f"space (old runs' checkpoints, earlier exports) and export again.")


def export_gguf(run_dir: str | Path, quant: str | None = "auto", checkpoint: str | None = None,
                out: str | Path | None = None, progress: Progress | None = None, n_prompts: int = 8,
                n_tokens: int = 32, verify_adapter: bool = True, gen: GenSettings | None = None,
                make_zip: bool = True) -> GGUFExport:
    """Export one of the run's adapters as GGUF files + Ollama Modelfiles (see the module doc), check them with
    llama-server, and zip them (stored: GGUF does not compress) unless the folder is over ZIP_MAX_BYTES.
    `out`: the folder to put the export in (default run_dir/exports/): it gets <run>-gguf-<type>[-stepN]-<date>/
    and the .zip of the same name; nothing else in it is touched."""
    from .models import resolve_source

    say = progress or (lambda f, d: None)
    run_dir = Path(run_dir)
    which = _which(run_dir, checkpoint)
    adapter = _adapter_dir(run_dir, which)
    llamacpp.tools()  # before anything heavy: say what to install
    cfg = RunConfig.load(run_dir / CONFIG)
    base_dir = resolve_source(cfg.model.source)
    gen = gen or GenSettings()
    if (quant or "auto").lower() != "auto":
        pick_quant(quant, 0)  # an unknown type is refused before minutes of merging, not after
    exports = Path(out).expanduser() if out is not None else run_dir / EXPORTS
    if exports.exists() and not exports.is_dir():
        raise ValueError(f"{exports} is a file: give a folder to put the GGUF export in.")
    _check_space(exports, base_dir)
    work = private_dir(exports, ".gguf-")
    log = work / "export.log"
    stages: list[Stage] = []

    def stage(name: str, t0: float, path: Path | None = None) -> None:
        stages.append(Stage(name, round(time.perf_counter() - t0, 2), path.name if path else None,
                            path.stat().st_size if path and path.is_file() else None))

    try:
        say(0.02, "Merging the adapter into the 16-bit base")
        t0 = time.perf_counter()
        model, tokenizer, _ = merged_model(run_dir, which)
        n_params = sum(p.numel() for p in model.parameters())
        quant = pick_quant(quant, n_params)
        merged = work / "merged"
        model.save_pretrained(merged, safe_serialization=True)
        tokenizer.save_pretrained(merged)
        stage("merge (PyTorch, saved as safetensors)", t0)

        say(0.15, "Greedy answers of the merged PyTorch model")
        t0 = time.perf_counter()
        convs, source = verify_prompts(run_dir, tokenizer, cfg, n_prompts)
        prompts = [encode(tokenizer, c) for c in convs]
        eos = _eos_ids(model, tokenizer)
        ref = [greedy(model, p, n_tokens, eos) for p in prompts]
        stage(f"reference answers ({len(prompts)} prompts, PyTorch)", t0)
        del model
        gc.collect()

        name = gguf_name(run_dir, which, quant)
        stem = name[:-len(".zip")]
        model_file = f"{slug(run_name(run_dir))}-{quant}.gguf"
        target = work / model_file
        say(0.3, f"Converting to GGUF ({quant.upper() if quant in llamacpp.CONVERTER_TYPES else 'F16'})")
        t0 = time.perf_counter()
        if quant in llamacpp.CONVERTER_TYPES:
            llamacpp.convert_model(merged, target, quant, log)
            stage(f"convert to {quant.upper()}", t0, target)
        else:
            f16 = work / "merged-f16.gguf"
            llamacpp.convert_model(merged, f16, "f16", log)
            stage("convert to F16", t0, f16)
            say(0.45, f"Quantising to {quant.upper()}")
            t0 = time.perf_counter()
            llamacpp.quantize(f16, target, quant, log)
            stage(f"quantise to {quant.upper()}", t0, target)
            f16.unlink()
        shutil.rmtree(merged)

        say(0.55, "Converting the adapter to GGUF")
        t0 = time.perf_counter()
        adapter_gguf = llamacpp.convert_adapter(adapter, base_dir, work / ADAPTER_GGUF, log)
        stage("convert the adapter", t0, adapter_gguf)

        say(0.65, f"Running {model_file} in llama-server")
        t0 = time.perf_counter()
        with llamacpp.Server(target, log=work / "llama-server.log") as srv:
            got = [srv.complete(p, n_tokens) for p in prompts]
            template_matches = _template_matches(srv, convs[0], tokenizer)
        agreement = compare(convs, ref, [_until_eos(g, eos) for g in got], tokenizer, n_tokens)
        stage("check the GGUF in llama-server", t0)

        adapter_agreement: list[dict] = []
        if verify_adapter:
            say(0.8, "Checking the adapter GGUF on a 16-bit base")
            t0 = time.perf_counter()
            base_gguf = llamacpp.convert_model(base_dir, work / "base-f16.gguf", "f16", log)
            with llamacpp.Server(base_gguf, log=work / "llama-server.log", lora=adapter_gguf) as srv:
                got = [srv.complete(p, n_tokens) for p in prompts]
            adapter_agreement = compare(convs, ref, [_until_eos(g, eos) for g in got], tokenizer, n_tokens)
            base_gguf.unlink()
            stage("check the adapter GGUF (base F16 + adapter)", t0)

        say(0.92, "Writing the Modelfiles, the model card and the zip")
        t0 = time.perf_counter()
        title = run_name(run_dir)
        (work / "Modelfile").write_text(modelfile(f"./{model_file}", tokenizer, cfg, gen, name=title),
                                        encoding="utf-8")
        (work / "Modelfile.adapter").write_text(modelfile("./BASE.gguf", tokenizer, cfg, gen, name=title,
                                                          adapter=f"./{ADAPTER_GGUF}"), encoding="utf-8")
        shutil.copy2(run_dir / CONFIG, work / CONFIG)
        png = loss_curve_png(run_dir)
        if png is not None:
            shutil.copy2(png, work / LOSS_PNG)
        result = GGUFExport(folder=work, zip=None, quant=quant, model_file=model_file, stages=stages,
                            agreement=agreement, adapter_agreement=adapter_agreement, tokens=n_tokens,
                            prompt_source=source, template_matches=template_matches)
        card = model_card(run_dir, has_png=png is not None, checkpoint=which)
        base_note = "" if cfg.model.quantization != "nf4" else (
            "\nThe adapter was trained on a 4-bit NF4 base; here it is merged into the 16-bit base, the usual "
            "QLoRA practice, so answers can differ slightly from the Chat tab's (which runs the 4-bit base).\n")
        stage("package", t0)
        (work / "README.md").write_text(gguf_readme(card, result, base_note, n_params), encoding="utf-8")
        (work / REPORT).write_text(json.dumps(_report(result, n_params), indent=1), encoding="utf-8")

        dest = exports / stem
        old = None
        if dest.exists():  # an earlier export of the same adapter and type today: set aside until the new one is in
            old = exports / f".{stem}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(work, dest)
        result.folder = dest
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if make_zip and sum(result.files().values()) <= ZIP_MAX_BYTES:
        result.zip = _zip(dest, dest.parent / name)
    say(1.0, "Done")
    return result


def _template_matches(srv: llamacpp.Server, messages: list[dict], tokenizer) -> bool | None:
    """Does the GGUF's embedded chat template (what LM Studio and llama-server's chat API use) render this
    conversation as the tokenizer does? llama-server's /apply-template renders without generating."""
    from .data import render_chat
    try:
        got = srv.post("/apply-template", {"messages": messages})["prompt"]
    except (llamacpp.GGUFError, KeyError, OSError):
        return None
    return got == render_chat(tokenizer, messages, add_generation_prompt=True)[0]


def _report(result: GGUFExport, n_params: int) -> dict:
    return {"quant": result.quant, "model_file": result.model_file, "parameters": n_params,
            "files": result.files(), "stages": [asdict(s) for s in result.stages], "tokens": result.tokens,
            "prompt_source": result.prompt_source, "summary": result.summary,
            "adapter_summary": result.adapter_summary, "template_matches": result.template_matches,
            "agreement": result.agreement, "adapter_agreement": result.adapter_agreement}


def _zip(folder: Path, dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for f in sorted(folder.iterdir()):
                if f.is_file() and f.name not in LOGS:
                    zf.write(f, f.name)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


__all__ = ["export_gguf", "GGUFExport", "Stage", "modelfile", "template_family", "gguf_name", "pick_quant",
           "agreement_summary"]
