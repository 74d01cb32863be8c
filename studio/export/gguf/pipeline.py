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

import contextlib
import gc
import json
import os
import shutil
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ...config import GenSettings, RunConfig
from ...env.io import atomic_write, write_text
from ...runs.create import slug
from ...runs.layout import CONFIG, EXPORTS, run_name
from .. import llamacpp
from ..card import LOSS_PNG, loss_curve_png, model_card
from ..choice import adapter_dir, which, zip_name
from ..merged import merged_model, private_dir
from ..safety import Stopped, disk_full, disk_full_sentence, release, stop_on_sigterm, sweep
from .ollama import modelfile
from .report import ADAPTER_GGUF, LOGS, GGUFExport, Stage, gguf_readme
from .verify import compare, encode, eos_ids, greedy, until_eos, verify_prompts

REPORT = "gguf-report.json"
ZIP_MAX_BYTES = int(os.environ.get("STUDIO_GGUF_ZIP_MAX", 4 * 2**30))  # above this the export stays a folder
BIG_MODEL = 1_000_000_000  # "auto": Q4_K_M from 1B parameters, Q8_0 below (small models suffer more from 4 bits)

Progress = Callable[[float, str], None]


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


class _Work:
    """One export in its hidden work folder: each step timed into `stages`, its tools' output into export.log."""

    def __init__(self, run_dir: Path, chosen: str, cfg: RunConfig, base_dir: Path, work: Path, say: Progress):
        self.run_dir, self.chosen, self.cfg, self.base_dir, self.work, self.say = \
            run_dir, chosen, cfg, base_dir, work, say
        self.log = work / "export.log"
        self.stages: list[Stage] = []

    def stage(self, name: str, t0: float, path: Path | None = None) -> None:
        self.stages.append(Stage(name, round(time.perf_counter() - t0, 2), path.name if path else None,
                                 path.stat().st_size if path and path.is_file() else None))

    def merge_and_answer(self, quant: str | None, n_prompts: int, n_tokens: int):
        """The merged 16-bit model saved as safetensors, and its greedy answers (token ids) on the check prompts.
        Returns (tokenizer, parameters, quant type, conversations, their source, prompt ids, answers, eos ids)."""
        self.say(0.02, "Merging the adapter into the 16-bit base")
        t0 = time.perf_counter()
        model, tokenizer, _ = merged_model(self.run_dir, self.chosen)
        n_params = sum(p.numel() for p in model.parameters())
        quant = pick_quant(quant, n_params)
        model.save_pretrained(self.work / "merged", safe_serialization=True)
        tokenizer.save_pretrained(self.work / "merged")
        self.stage("merge (PyTorch, saved as safetensors)", t0)
        self.say(0.15, "Greedy answers of the merged PyTorch model")
        t0 = time.perf_counter()
        convs, source = verify_prompts(self.run_dir, tokenizer, self.cfg, n_prompts)
        prompts = [encode(tokenizer, c) for c in convs]
        eos = eos_ids(model, tokenizer)
        ref = [greedy(model, p, n_tokens, eos) for p in prompts]
        self.stage(f"reference answers ({len(prompts)} prompts, PyTorch)", t0)
        del model
        gc.collect()
        return tokenizer, n_params, quant, convs, source, prompts, ref, eos

    def convert(self, quant: str, model_file: str) -> tuple[Path, Path]:
        """The merged model as a GGUF of type `quant` (the converter writes f32/f16/bf16/q8_0 itself; other types are
        quantised from F16), and the adapter as a GGUF LoRA. Returns (model GGUF, adapter GGUF)."""
        merged, target = self.work / "merged", self.work / model_file
        self.say(0.3, f"Converting to GGUF ({quant.upper() if quant in llamacpp.CONVERTER_TYPES else 'F16'})")
        t0 = time.perf_counter()
        if quant in llamacpp.CONVERTER_TYPES:
            llamacpp.convert_model(merged, target, quant, self.log)
            self.stage(f"convert to {quant.upper()}", t0, target)
        else:
            f16 = self.work / "merged-f16.gguf"
            llamacpp.convert_model(merged, f16, "f16", self.log)
            self.stage("convert to F16", t0, f16)
            self.say(0.45, f"Quantising to {quant.upper()}")
            t0 = time.perf_counter()
            llamacpp.quantize(f16, target, quant, self.log)
            self.stage(f"quantise to {quant.upper()}", t0, target)
            f16.unlink()
        shutil.rmtree(merged)
        self.say(0.55, "Converting the adapter to GGUF")
        t0 = time.perf_counter()
        adapter_gguf = llamacpp.convert_adapter(adapter_dir(self.run_dir, self.chosen), self.base_dir,
                                                self.work / ADAPTER_GGUF, self.log)
        self.stage("convert the adapter", t0, adapter_gguf)
        return target, adapter_gguf

    def check(self, target: Path, adapter_gguf: Path | None, convs, prompts, ref, eos, tokenizer, n_tokens: int):
        """llama-server's greedy answers against the PyTorch ones: the model GGUF, then (adapter_gguf given) a 16-bit
        base GGUF with the adapter GGUF. Returns (agreement, adapter agreement, template matches)."""
        self.say(0.65, f"Running {target.name} in llama-server")
        t0 = time.perf_counter()
        with llamacpp.Server(target, log=self.work / "llama-server.log") as srv:
            got = [srv.complete(p, n_tokens) for p in prompts]
            template_matches = _template_matches(srv, convs[0], tokenizer)
        agreement = compare(convs, ref, [until_eos(g, eos) for g in got], tokenizer, n_tokens)
        self.stage("check the GGUF in llama-server", t0)
        adapter_agreement: list[dict] = []
        if adapter_gguf is not None:
            self.say(0.8, "Checking the adapter GGUF on a 16-bit base")
            t0 = time.perf_counter()
            base_gguf = llamacpp.convert_model(self.base_dir, self.work / "base-f16.gguf", "f16", self.log)
            with llamacpp.Server(base_gguf, log=self.work / "llama-server.log", lora=adapter_gguf) as srv:
                got = [srv.complete(p, n_tokens) for p in prompts]
            adapter_agreement = compare(convs, ref, [until_eos(g, eos) for g in got], tokenizer, n_tokens)
            base_gguf.unlink()
            self.stage("check the adapter GGUF (base F16 + adapter)", t0)
        return agreement, adapter_agreement, template_matches

    def build(self, quant: str | None, n_prompts: int, n_tokens: int, verify_adapter: bool,
              gen: GenSettings) -> GGUFExport:
        """Every step in the work folder: merge, convert, check in llama-server, package."""
        tokenizer, n_params, quant, convs, source, prompts, ref, eos = self.merge_and_answer(quant, n_prompts, n_tokens)
        model_file = f"{slug(run_name(self.run_dir))}-{quant}.gguf"
        target, adapter_gguf = self.convert(quant, model_file)
        agreement, adapter_agreement, template_matches = self.check(
            target, adapter_gguf if verify_adapter else None, convs, prompts, ref, eos, tokenizer, n_tokens)
        result = GGUFExport(folder=self.work, zip=None, quant=quant, model_file=model_file, stages=self.stages,
                            agreement=agreement, adapter_agreement=adapter_agreement, tokens=n_tokens,
                            prompt_source=source, template_matches=template_matches)
        self.package(result, tokenizer, gen, n_params)
        return result

    def package(self, result: GGUFExport, tokenizer, gen: GenSettings, n_params: int) -> None:
        """Modelfiles, config.yaml, the loss curve, README.md (the model card + the GGUF section), the report."""
        self.say(0.92, "Writing the Modelfiles, the model card and the zip")
        t0 = time.perf_counter()
        title, w, cfg = run_name(self.run_dir), self.work, self.cfg
        write_text(w / "Modelfile", modelfile(f"./{result.model_file}", tokenizer, cfg, gen, name=title))
        write_text(w / "Modelfile.adapter", modelfile("./BASE.gguf", tokenizer, cfg, gen, name=title,
                                                      adapter=f"./{ADAPTER_GGUF}"))
        shutil.copy2(self.run_dir / CONFIG, w / CONFIG)
        png = loss_curve_png(self.run_dir)
        if png is not None:
            shutil.copy2(png, w / LOSS_PNG)
        card = model_card(self.run_dir, has_png=png is not None, checkpoint=self.chosen)
        base_note = "" if cfg.model.quantization != "nf4" else (
            "\nThe adapter was trained on a 4-bit NF4 base; here it is merged into the 16-bit base, the usual "
            "QLoRA practice, so answers can differ slightly from the Chat tab's (which runs the 4-bit base).\n")
        self.stage("package", t0)
        write_text(w / "README.md", gguf_readme(card, result, base_note, n_params))
        write_text(w / REPORT, json.dumps(_report(result, n_params), indent=1))


def export_gguf(run_dir: str | Path, quant: str | None = "auto", checkpoint: str | None = None,
                out: str | Path | None = None, progress: Progress | None = None, n_prompts: int = 8,
                n_tokens: int = 32, verify_adapter: bool = True, gen: GenSettings | None = None,
                make_zip: bool = True) -> GGUFExport:
    """Export one of the run's adapters as GGUF files + Ollama Modelfiles (see the module doc), check them with
    llama-server, and zip them (stored: GGUF does not compress) unless the folder is over ZIP_MAX_BYTES.
    `out`: the folder to put the export in (default run_dir/exports/): it gets <run>-gguf-<type>[-stepN]-<date>/
    and the .zip of the same name. Nothing else in it is touched, except that the hidden work folders of exports no
    longer running are swept first (said through `progress`), and a failed export leaves its tools' output there
    as <run>-gguf-export-failed.log. SIGTERM (main thread) stops the export cleanly: safety.stop_on_sigterm."""
    from ...models import resolve_source

    run_dir = Path(run_dir)
    chosen = which(run_dir, checkpoint)
    adapter_dir(run_dir, chosen)  # a missing adapter is refused first
    llamacpp.tools()  # before anything heavy: say what to install
    cfg = RunConfig.load(run_dir / CONFIG)
    base_dir = resolve_source(cfg.model.source)
    if (quant or "auto").lower() != "auto":
        pick_quant(quant, 0)  # an unknown type is refused before minutes of merging, not after
    exports = Path(out).expanduser() if out is not None else run_dir / EXPORTS
    if exports.exists() and not exports.is_dir():
        raise ValueError(f"{exports} is a file: give a folder to put the GGUF export in.")
    say = progress or (lambda f, d: None)
    notes = sweep(exports)  # before the space check: what it removes is space again
    for line in notes:
        say(0.0, line)
    _check_space(exports, base_dir)
    with stop_on_sigterm("The GGUF export"):
        w = _Work(run_dir, chosen, cfg, base_dir, private_dir(exports, ".gguf-"), say)
        try:
            result = w.build(quant, n_prompts, n_tokens, verify_adapter, gen or GenSettings())
            result.folder = _place(w.work, exports / gguf_name(run_dir, chosen, result.quant)[:-len(".zip")])
            release(result.folder)
            result.notes = notes
        except BaseException as e:
            failure = _failed(w, exports, e)
            if failure is e:
                raise
            raise failure from e
        if make_zip and sum(result.files().values()) <= ZIP_MAX_BYTES:
            result.zip = _zip(result.folder, result.folder.parent / f"{result.folder.name}.zip")
    w.say(1.0, "Done")
    return result


def _failed(w: _Work, exports: Path, e: BaseException) -> BaseException:
    """The exception to raise for a failed export, once its work folder is removed: a full disk said with the
    free space; the tools' log, when the message names it, kept next to the export (outside the removed folder)
    and named there instead."""
    full = disk_full(e)
    where = disk_full_sentence(exports) if full else ""  # measured before the work folder frees its space
    named = any(str(log) in str(e) for log in (w.log, w.work / LOGS[1]))  # a message that sends the user there
    kept = _keep_log(w, exports) if (full or named) and not isinstance(e, Stopped) else None
    shutil.rmtree(w.work, ignore_errors=True)
    if full:
        return llamacpp.GGUFError(
            f"The GGUF export failed ({where}). Free some space (the export needs about four times the base "
            f"model's size while working: old runs' checkpoints, earlier exports) and export again"
            + (f"; the tools' output is in {kept}." if kept else "."))
    if kept is not None and isinstance(e, llamacpp.GGUFError):
        msg = str(e).replace(str(w.log), str(kept)).replace(str(w.work / LOGS[1]), str(kept))
        if msg != str(e):
            return type(e)(msg)
    return e


def _keep_log(w: _Work, exports: Path) -> Path | None:
    """Move the tools' output (export.log, then llama-server.log) out of the work folder before it is removed, to
    <run>-gguf-export-failed.log beside the exports: a rename, so it works on a full disk too."""
    if not w.log.is_file():
        return None
    kept = exports / f"{slug(run_name(w.run_dir))}-gguf-export-failed.log"
    try:
        os.replace(w.log, kept)
    except OSError:
        return None
    server = w.work / LOGS[1]
    with contextlib.suppress(OSError), open(kept, "a", encoding="utf-8") as f:
        if server.is_file():
            f.write(f"\n--- {LOGS[1]} ---\n" + server.read_text(encoding="utf-8", errors="replace"))
    return kept


def _place(work: Path, dest: Path) -> Path:
    """The finished work folder under its final name; an earlier export of the same adapter and type today is set
    aside until the new one is in, then removed."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    os.replace(work, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _template_matches(srv: llamacpp.Server, messages: list[dict], tokenizer) -> bool | None:
    """Does the GGUF's embedded chat template (what LM Studio and llama-server's chat API use) render this
    conversation as the tokenizer does? llama-server's /apply-template renders without generating."""
    from ...data import render_chat
    try:
        got = srv.post("/apply-template", {"messages": messages})["prompt"]
    except (llamacpp.GGUFError, KeyError, OSError):
        return None
    return got == render_chat(tokenizer, messages, add_generation_prompt=True)[0]


def _report(result: GGUFExport, n_params: int) -> dict:
    return {"quant": result.quant, "model_file": result.model_file, "parameters": n_params,
            "files": result.files(), "stages": [asdict(s) for s in result.stages], "tokens": result.tokens,
            "prompt_source": result.prompt_source, "summary": result.summary, "verdict": result.verdict,
            "adapter_summary": result.adapter_summary, "template_matches": result.template_matches,
            "agreement": result.agreement, "adapter_agreement": result.adapter_agreement}


def _zip(folder: Path, dest: Path) -> Path:
    with atomic_write(dest, binary=True) as f, \
            zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.name not in LOGS and not p.name.startswith("."):
                zf.write(p, p.name)
    return dest
