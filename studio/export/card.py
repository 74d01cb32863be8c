"""The model card that goes with every export (README.md: base model, data, hyperparameters, results, how to load
it) and the loss curve drawn for it."""
from __future__ import annotations

import math
import time
from pathlib import Path

from ..config import DEMO_MODEL, RunConfig
from ..env.io import atomic_write
from ..evals.evaluate import latest_eval
from ..runs import events
from ..runs.layout import CONFIG, DATASET, EVAL_SET, EXPORTS, FINAL, METRICS, checkpoint_step, run_info, run_name
from ..runs.results import best_adapter, final_loss
from .choice import DEMO_HUB_ID, adapter_dir, portable_base, which

LOSS_PNG = "loss_curve.png"


def loss_curve_png(run_dir: Path) -> Path | None:
    """run_dir/exports/loss_curve.png (train + eval loss vs step), drawn once per change of metrics.jsonl."""
    run_dir = Path(run_dir)
    losses = events.loss_series(run_dir)
    if not losses.train and not losses.eval:
        return None
    out = run_dir / EXPORTS / LOSS_PNG
    src = run_dir / METRICS
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
    with atomic_write(out, binary=True) as f:
        fig.savefig(f, format="png")
    return out


def _steps(run_dir: Path) -> int | None:
    st = events.read_status(run_dir).get("step")
    if isinstance(st, int):
        return st
    steps = [e.get("step") for e in events.read_metrics_events(run_dir) if isinstance(e.get("step"), int)]
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
    evals = dict(events.loss_series(run_dir).eval)
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


def front_matter(base: str) -> str:
    """The card's YAML metadata, written by huggingface_hub (a base path with ': ' or '#' stays valid YAML)."""
    from huggingface_hub import ModelCardData
    return ModelCardData(base_model=base, library_name="peft",
                         tags=["lora", "qlora", "qlora-studio", "text-generation"]).to_yaml() + "\n"


def _data_text(run_dir: Path, cfg: RunConfig) -> str:
    """The card's Data section: the user's file and what was read of it, the held-out share, the system prompt."""
    info = run_info(run_dir)
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
    return "\n".join(data_lines) or "- (no data summary recorded)"


def checks_text(run_dir: Path, chosen: str) -> str:
    """The card's "Evaluation on checks" section from the run's newest evaluation (studio eval, or the one at the
    end of training); "" when it has none."""
    ev = latest_eval(run_dir)
    if ev is None:
        return ""
    sides = list(ev.get("sides") or {})
    who = " vs ".join(sides) if len(sides) == 2 else "the two sides"
    other = "the base model" if ev.get("against") == "base" else f"`{Path(str(ev.get('against'))).name}`"
    which = ev.get("checkpoint") or FINAL
    note = "" if which == chosen else f" It evaluated the run's `{which}` adapter, not this one (`{chosen}`)."
    lines = "\n".join(f"- {line}" for line in ev["summary"])
    return (f"\n## Evaluation on checks\n"
            f"Greedy answers (temperature 0, up to {ev.get('max_new_tokens', '?')} new tokens) of the tuned model and "
            f"{other} to {ev.get('rows_n', '?')} {ev.get('where', 'held-out')} prompts, each scored by the run's "
            f"checks ({who}: pass rate = answers scoring 1, with its 95% interval; mean score from 0 to 1), on "
            f"{ev.get('time', '?')}.{note}\n\n{lines}\n")


def model_card(run_dir: Path, has_png: bool = True, checkpoint: str | None = None) -> str:
    """README.md for the zip: base model, data, hyperparameters, results, and how to load it."""
    run_dir = Path(run_dir)
    chosen = which(run_dir, checkpoint)
    adapter = adapter_dir(run_dir, chosen)
    cfg = RunConfig.load(run_dir / CONFIG)
    name = run_name(run_dir)
    base = portable_base(cfg)
    train_loss, eval_loss = final_loss(run_dir)
    steps = _steps(run_dir)
    data_text = _data_text(run_dir, cfg)
    lo, t, m = cfg.lora, cfg.train, cfg.model
    quant = "4-bit NF4" + (" with double quantisation" if m.double_quant else "") if m.quantization == "nf4" \
        else "none (plain LoRA)"
    demo_note = (f"\nThe run used QLoRA Studio's bundled copy of `{DEMO_HUB_ID}` (converted from a Q4_1 GGUF), so "
                 f"the adapter may behave slightly differently on the original weights.\n"
                 if m.source == DEMO_MODEL else "")
    ppl = _fmt(math.exp(eval_loss), 2) if isinstance(eval_loss, (int, float)) and eval_loss < 700 else "-"
    date = time.strftime("%Y-%m-%d", time.localtime((adapter / "adapter_model.safetensors").stat().st_mtime))
    length = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    return f"""---
{front_matter(base)}---

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
| LoRA rank r / alpha / dropout | {lo.r} / {lo.alpha} / {lo.dropout:g} |
| target modules | {", ".join(lo.target_modules)} |
| learning rate, schedule | {t.learning_rate:g}, {t.lr_scheduler} (warm-up {t.warmup_ratio:g}) |
| length | {length} |
| batch size x gradient accumulation | {t.batch_size} x {t.grad_accum} |
| max sequence length, packing | {t.max_length}, {"on" if t.packing else "off"} |
| optimiser, weight decay | {t.optimizer}, {t.weight_decay:g} |
| seed | {t.seed} |

The full settings are in `config.yaml`; every logged step is in `events.jsonl`.

## Results
- Steps trained: {steps if steps is not None else "-"}
- Final train loss: {_fmt(train_loss)}
- Final eval loss: {_fmt(eval_loss)} (perplexity {ppl})
{_which_text(run_dir, chosen)}
{"" if not has_png else chr(10) + "![loss curve](loss_curve.png)" + chr(10)}{checks_text(run_dir, chosen)}
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
