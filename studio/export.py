"""Take a run's result away: the adapter as a zip with a model card, or the adapter merged into its base.

torch/transformers/peft/matplotlib are imported inside the functions that use them.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from . import metrics
from .config import DEMO_MODEL, RunConfig
from .runs import (ADAPTER, CONFIG, DATASET, EVAL_SET, EXPORTS, FINAL, RUN_INFO, STUDIO_CONFIG, best_adapter,
                   checkpoint_step, final_loss, resolve_adapter, run_name, slug)

LOSS_PNG = "loss_curve.png"
MERGED = "merged"
DEMO_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the bundled demo model is a copy of
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def _which(run_dir: Path, checkpoint: str | None) -> str:
    """The adapter name to export: "adapter" (the final one, the default), "checkpoint-N", or "best" -> the
    run's adapter with the lowest eval loss (the final one when nothing was measured)."""
    if checkpoint == "best":
        best = best_adapter(run_dir)
        return best.name if best else FINAL
    return checkpoint or FINAL


def _adapter_dir(run_dir: Path, checkpoint: str | None = None) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ValueError(f"{run_dir} is not a run folder (no {CONFIG} in it).")
    name = _which(run_dir, checkpoint)
    if name == FINAL:
        adapter = run_dir / ADAPTER
        if not all((adapter / f).is_file() for f in ADAPTER_FILES):
            raise ValueError(f"Run {run_dir.name} has no adapter yet: finish or stop the run first (stopping saves "
                             f"the adapter), then export.")
        return adapter
    adapter, _, _ = resolve_adapter(run_dir, name)
    if not (adapter / ADAPTER_FILES[0]).is_file():
        raise ValueError(f"{adapter} has no {ADAPTER_FILES[0]}: export the final adapter or another checkpoint.")
    return adapter


def zip_name(run_dir: Path, checkpoint: str | None = None) -> str:
    """<slug of the run name>-adapter[-stepN]-<YYYYMMDD the adapter was saved>.zip (-stepN for a checkpoint):
    only ASCII letters, digits, - and _."""
    run_dir = Path(run_dir)
    name = _which(run_dir, checkpoint)
    folder = run_dir / ADAPTER if name == FINAL else resolve_adapter(run_dir, name)[0]
    st = folder / "adapter_model.safetensors"
    day = time.strftime("%Y%m%d", time.localtime(st.stat().st_mtime if st.exists() else time.time()))
    step = "" if name == FINAL else f"-step{checkpoint_step(name)}"
    return f"{slug(run_name(run_dir))}-adapter{step}-{day}.zip"


def _portable_base(cfg: RunConfig) -> str:
    """The base as someone else can load it: the hub id for the demo or a hub source, else the folder."""
    src = cfg.model.source
    if src == DEMO_MODEL:
        return DEMO_HUB_ID
    return src


def loss_curve_png(run_dir: Path) -> Path | None:
    """run_dir/exports/loss_curve.png (train + eval loss vs step), drawn once per change of metrics.jsonl."""
    run_dir = Path(run_dir)
    losses = metrics.loss_series(run_dir)
    if not losses.train and not losses.eval:
        return None
    out = run_dir / EXPORTS / LOSS_PNG
    src = run_dir / metrics.METRICS
    if out.is_file() and src.is_file() and out.stat().st_mtime_ns >= src.stat().st_mtime_ns:
        return out
    # Figure + the Agg canvas directly: no pyplot, so no global figure registry and no GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if losses.train:
        ax.plot(*zip(*losses.train), label="train loss", color="#3b6fd6", lw=1.5)
    if losses.eval:
        ax.plot(*zip(*losses.eval), label="eval loss", color="#e07b39", lw=1.5, marker="o", ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out)
    return out


def _steps(run_dir: Path) -> int | None:
    st = metrics.read_status(run_dir).get("step")
    if isinstance(st, int):
        return st
    steps = [e.get("step") for e in metrics.read_metrics_events(run_dir) if isinstance(e.get("step"), int)]
    return max(steps) if steps else None


def _count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _fmt(x, nd: int = 4) -> str:
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else "-"


def _which_text(run_dir: Path, name: str) -> str:
    """A sentence on which of the run's adapters this is and how it compares on the held-out rows."""
    evals = dict(metrics.loss_series(run_dir).eval)
    best = best_adapter(run_dir)
    if name == FINAL:
        what = "the run's final adapter"
        step = _steps(run_dir)
    else:
        step = checkpoint_step(name)
        what = f"the checkpoint at step {step} ({name}), not the run's final adapter"
    loss = f", eval loss {evals[step]:.4f}" if step in evals else ""
    if best is not None and best.name == name:
        tail = "; the lowest eval loss of the run"
    elif best is not None:
        tail = f"; the lowest eval loss of the run was {best.eval_loss:.4f} at step {best.step} ({best.name})"
    else:
        tail = ""
    return f"- This adapter: {what}{loss}{tail}."


def model_card(run_dir: Path, has_png: bool = True, checkpoint: str | None = None) -> str:
    """README.md for the zip: base model, data, hyperparameters, results, and how to load it."""
    import math

    run_dir = Path(run_dir)
    which = _which(run_dir, checkpoint)
    adapter = _adapter_dir(run_dir, which)
    cfg = RunConfig.load(run_dir / CONFIG)
    name = run_name(run_dir)
    base = _portable_base(cfg)
    train_loss, eval_loss = final_loss(run_dir)
    steps = _steps(run_dir)
    try:
        info = json.loads((run_dir / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        info = {}
    n_rows, n_eval = _count_lines(run_dir / DATASET), _count_lines(run_dir / EVAL_SET)
    data_lines = []
    if info.get("data_summary"):
        src = Path(info["source_data"]).name if info.get("source_data") else "the uploaded file"
        data_lines.append(f"- Source: `{src}`: {info['data_summary']}")
    if n_rows is not None:
        data_lines.append(f"- {n_rows} examples after validation" + (f", {n_eval} of them held out for evaluation"
                                                                      if n_eval else "") + ".")
    if cfg.data.system_prompt:
        data_lines.append(f"- System prompt given to every example without one: \"{cfg.data.system_prompt}\"")
    data_text = "\n".join(data_lines) or "- (no data summary recorded)"
    l, t, m = cfg.lora, cfg.train, cfg.model
    quant = "4-bit NF4" + (" with double quantisation" if m.double_quant else "") if m.quantization == "nf4" \
        else "none (plain LoRA)"
    demo_note = (f"\nThe run used QLoRA Studio's bundled copy of `{DEMO_HUB_ID}` (converted from a Q4_1 GGUF), so "
                 f"the adapter may behave slightly differently on the original weights.\n"
                 if m.source == DEMO_MODEL else "")
    ppl = _fmt(math.exp(eval_loss), 2) if isinstance(eval_loss, (int, float)) and eval_loss < 700 else "-"
    date = time.strftime("%Y-%m-%d", time.localtime((adapter / "adapter_model.safetensors").stat().st_mtime))
    length = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    return f"""---
base_model: {base}
library_name: peft
tags: [lora, qlora, qlora-studio, text-generation]
---

# {name}: LoRA adapter for {base}

A LoRA adapter trained with QLoRA Studio on {date}. Base model: **{base}**.
{demo_note}
## Data
{data_text}

## Hyperparameters
| setting | value |
|---|---|
| base model | {base} |
| quantisation during training | {quant} |
| LoRA rank r / alpha / dropout | {l.r} / {l.alpha} / {l.dropout:g} |
| target modules | {", ".join(l.target_modules)} |
| learning rate, schedule | {t.learning_rate:g}, {t.lr_scheduler} (warm-up {t.warmup_ratio:g}) |
| length | {length} |
| batch size x gradient accumulation | {t.batch_size} x {t.grad_accum} |
| max sequence length, packing | {t.max_length}, {"on" if t.packing else "off"} |
| optimiser, weight decay | {t.optimizer}, {t.weight_decay:g} |
| seed | {t.seed} |

The full settings are in `config.yaml`; every logged step is in `metrics.jsonl`.

## Results
- Steps trained: {steps if steps is not None else "-"}
- Final train loss: {_fmt(train_loss)}
- Final eval loss: {_fmt(eval_loss)} (perplexity {ppl})
{_which_text(run_dir, which)}
{"" if not has_png else chr(10) + "![loss curve](loss_curve.png)" + chr(10)}
## How to load
Unzip into a folder (here `my-adapter/`), then:

```python
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

# either: base + adapter in one call (reads base_model_name_or_path from adapter_config.json)
model = AutoPeftModelForCausalLM.from_pretrained("my-adapter")

# or: load the base yourself and put the adapter on it
base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "my-adapter")

tokenizer = AutoTokenizer.from_pretrained("my-adapter")
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)
out = model.generate(**inputs, max_new_tokens=128)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

`model.merge_and_unload()` folds the adapter into the base weights for faster inference.
"""


def export_adapter_zip(run_dir: str | Path, out: str | Path | None = None, checkpoint: str | None = None) -> Path:
    """Zip one of the run's adapters (`checkpoint`: "adapter" = the final one, the default; "checkpoint-N";
    "best") with tokenizer, config.yaml, metrics.jsonl, loss_curve.png and a README.md model card.
    `out`: a .zip path or a folder; default run_dir/exports/<run>-adapter[-stepN]-<date>.zip."""
    run_dir = Path(run_dir)
    checkpoint = _which(run_dir, checkpoint)
    adapter = _adapter_dir(run_dir, checkpoint)
    name = zip_name(run_dir, checkpoint)
    if out is None:
        dest = run_dir / EXPORTS / name
    else:
        out = Path(out).expanduser()
        dest = out if out.suffix.lower() == ".zip" and not out.is_dir() else out / name
        if out.exists() and not out.is_dir() and dest != out:
            raise ValueError(f"{out} is a file, not a folder or a .zip path: give a folder to put the zip in, or a "
                             f"path ending in .zip.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig.load(run_dir / CONFIG)
    png = loss_curve_png(run_dir)

    adapter_config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    # The trainer records the base as a folder on this machine; elsewhere the hub id is what loads.
    if cfg.model.source == DEMO_MODEL or not Path(cfg.model.source).expanduser().exists():
        adapter_config["base_model_name_or_path"] = _portable_base(cfg)

    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(adapter / "adapter_model.safetensors", "adapter_model.safetensors")
            zf.writestr("adapter_config.json", json.dumps(adapter_config, indent=2))
            for f in TOKENIZER_FILES:
                if (adapter / f).is_file():
                    zf.write(adapter / f, f)
            zf.write(run_dir / CONFIG, CONFIG)
            if (run_dir / metrics.METRICS).is_file():
                zf.write(run_dir / metrics.METRICS, "metrics.jsonl")
            if png is not None:
                zf.write(png, LOSS_PNG)
            zf.writestr("README.md", model_card(run_dir, has_png=png is not None, checkpoint=checkpoint))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; the zip is an ordinary file to share
        os.replace(tmp, dest)  # a half-written zip never carries the final name
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def merged_model(run_dir: str | Path, checkpoint: str | None = None):
    """(model, tokenizer, cfg): the base with one of the run's adapters folded in (merge_and_unload). The base is
    loaded unquantised: float32 on CPU, the compute dtype on GPU, since merging into 4-bit weights would round
    the update away."""
    import dataclasses

    from peft import PeftModel

    from .models import load_model, load_tokenizer, pick_device, resolve_source
    run_dir = Path(run_dir)
    adapter = _adapter_dir(run_dir, checkpoint)
    cfg = RunConfig.load(run_dir / CONFIG)
    device = pick_device()
    mcfg = cfg.model if device == "cuda" else dataclasses.replace(cfg.model, compute_dtype="float32")
    path = resolve_source(cfg.model.source)
    model = load_model(path, mcfg, device, quantize=False)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else path,
                               cfg.model.trust_remote_code)
    return model, tokenizer, cfg


def private_dir(parent: Path, prefix: str) -> Path:
    """A fresh hidden folder under `parent` to build an export in, then os.replace it to its final name (so a
    half-written export never carries that name); readable like any folder (mkdtemp makes it owner-only)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def export_merged(run_dir: str | Path, out: str | Path | None = None, checkpoint: str | None = None) -> Path:
    """The base with one of the run's adapters (as in export_adapter_zip) folded in, saved as safetensors +
    tokenizer in a folder (default run_dir/exports/merged/); see merged_model."""
    run_dir = Path(run_dir)
    model, tokenizer, cfg = merged_model(run_dir, checkpoint)
    dest = Path(out).expanduser() if out is not None else run_dir / EXPORTS / MERGED
    tmp = private_dir(dest.parent, f".{dest.name}-")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        cfg.save(tmp / STUDIO_CONFIG)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        del model
    return dest


__all__ = ["export_adapter_zip", "export_merged", "model_card", "loss_curve_png", "zip_name"]
