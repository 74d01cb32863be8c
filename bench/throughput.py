"""Training throughput and memory: the studio trainer against a plain transformers + peft reference.

    python bench/throughput.py                      # demo model, sample data, r=16 all-linear, 30 steps
    python bench/throughput.py --quantization none  # plain LoRA on an fp32 base, both sides
    python bench/throughput.py --repeats 2          # a b b a: drift on a shared machine hits both sides

(a) studio: `studio.train.recipe.build_trainer` with the UI's defaults for everything the flags do not set,
    plus the same metrics callback a UI run has (what `studio train` runs).
(b) plain:  what a user writes from the transformers + peft docs: AutoModelForCausalLM (+ BitsAndBytesConfig
    and prepare_model_for_kbit_training for QLoRA), get_peft_model, Trainer, DataCollatorForSeq2Seq padding
    to the longest row of each batch, no packing, gradient checkpointing on, defaults for everything else.
Both get the same tokenised rows (the studio's chat template and assistant-only labels), the same split,
seed, batch size, learning-rate schedule and optimiser, so they see the same rows in the same order and
their losses after the same number of tokens can be compared directly.

Each side runs in its own child process (clean peak RSS). Reported per side: non-padding tokens/s, seconds
per optimiser step (step 1, warm-up, left out of both), peak RSS (CPU) or peak allocated VRAM (CUDA), the
mean train loss of the last 5 steps and the held-out loss (same code for both); then the ratios and the
model-FLOP utilisation against this machine's fp32 matmul peak.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets HF_HUB_OFFLINE and the import path)

HERE = Path(__file__).resolve()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="'demo', a local model folder or a hub id (default: demo)")
    p.add_argument("--data", default=str(common.SAMPLE), help="dataset file (default: the sample pirate_qa.jsonl)")
    p.add_argument("--quantization", default="nf4", choices=("nf4", "none"))
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=int, default=None, help="default 2*r")
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU; 0 = one per physical core")
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternating a b b a ...")
    p.add_argument("--sides", default="studio,plain")
    p.add_argument("--no-packing", action="store_true", help="studio side with packing off")
    p.add_argument("--checkpointing", action="store_true", help="studio side with gradient checkpointing on")
    p.add_argument("--levers", default="auto", help="studio side: train.levers, comma-separated ('none' = none)")
    p.add_argument("--eval-fraction", type=float, default=0.1,
                   help="rows held out (the UI's default 0.1; 0 trains on every row, as a peer does)")
    p.add_argument("--compute-dtype", default="auto", help="model.compute_dtype for both sides")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="matmul peak for MFU (default: measured here; the issue quotes ~120 on this CPU)")
    p.add_argument("--json", default=None, help="write all figures here")
    p.add_argument("--child", choices=("studio", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- the child side ---------------------------------------------------------------------------

def studio_config(a):
    from studio.config import RunConfig
    return RunConfig(
        name="bench", model={"source": a.model, "quantization": a.quantization, "compute_dtype": a.compute_dtype},
        lora={"r": a.r, "alpha": a.alpha or 2 * a.r, "dropout": a.dropout},
        train={"max_steps": a.steps, "batch_size": a.batch_size, "grad_accum": a.grad_accum,
               "max_length": a.max_length, "learning_rate": a.lr, "threads": a.threads,
               "packing": not a.no_packing, "gradient_checkpointing": a.checkpointing, "levers": a.levers,
               "eval_fraction": a.eval_fraction},
        data={"path": a.data})


def make_timer(count):
    """Callback recording each optimiser step's wall time, tokens (from `count()`) and logged loss."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps, self.losses = [], {}

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), count()

        def on_step_end(self, args, state, control, **kw):
            c = count()
            self.steps.append({"dt": time.perf_counter() - self.t0, "tokens": c[0] - self.c0[0],
                               "trained": c[1] - self.c0[1], "positions": c[2] - self.c0[2]})

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses[state.global_step] = float(logs["loss"])

    return StepTimer()


def heldout_loss(model, rows, pad_id, batch=1) -> float:
    """Mean NLL over the assistant tokens of the held-out rows; the same code scores both sides."""
    import torch
    dev = next(p for p in model.parameters()).device
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            chunk = rows[i:i + batch]
            L = max(len(r["input_ids"]) for r in chunk)
            ids = torch.full((len(chunk), L), pad_id)
            att = torch.zeros((len(chunk), L), dtype=torch.long)
            lab = torch.full((len(chunk), L), -100)
            for j, r in enumerate(chunk):
                k = len(r["input_ids"])
                ids[j, :k] = torch.tensor(r["input_ids"])
                att[j, :k] = 1
                lab[j, :k] = torch.where(torch.tensor(r["assistant_masks"]) == 1, torch.tensor(r["input_ids"]), -100)
            logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).logits.float()
            y = lab[:, 1:].to(dev)
            m = y != -100
            lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)
            tot += float(-lp[m].sum())
            n += int(m.sum())
    return tot / max(n, 1)


def child(a) -> dict:
    import torch
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rss0 = common.PeakRSS().proc.memory_info().rss
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{a.child}-"))
    cfg = studio_config(a)
    t_load = time.time()
    if a.child == "studio":
        trainer, tok, timer, extra = _studio(cfg, run_dir)
    else:
        trainer, tok, timer, extra = _plain(cfg, run_dir, a)
    load_s = time.time() - t_load
    rss_loaded = common.PeakRSS().proc.memory_info().rss
    import torch
    t0 = time.time()
    with common.PeakRSS() as pk:
        trainer.train()
    train_wall = time.time() - t0
    peak_vram = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    max_rss = common.max_rss_bytes()  # before the held-out scoring below, which is the benchmark's, not the run's

    # held-out loss, same rows and code for both sides
    _, eval_rows, _ = _rows(cfg, run_dir, tok)
    ev = heldout_loss(trainer.model, eval_rows, tok.pad_token_id) if eval_rows else float("nan")
    trainer.model.save_pretrained(run_dir / "bench-adapter")  # for scorers outside this process (peer bench)

    steps = timer.steps
    body = steps[1:] if len(steps) > 1 else steps  # step 1 is warm-up (lazy allocations, first dequant)
    dt = sum(s["dt"] for s in body)
    last = [timer.losses[k] for k in sorted(timer.losses)][-5:]
    out = {
        "side": a.child, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(), "steps": len(steps),
        "tokens": sum(s["tokens"] for s in steps), "trained_tokens": sum(s["trained"] for s in steps),
        "positions": sum(s["positions"] for s in steps),
        "tokens_per_s": sum(s["tokens"] for s in body) / dt,
        "trained_tokens_per_s": sum(s["trained"] for s in body) / dt,
        "s_per_step": dt / len(body), "step_times": [round(s["dt"], 3) for s in steps],
        "loss_curve": [timer.losses[k] for k in sorted(timer.losses)],
        "final_train_loss": sum(last) / max(len(last), 1), "heldout_loss": ev,
        "rss_start_gb": common.gb(rss0), "rss_loaded_gb": common.gb(rss_loaded),
        "peak_rss_train_gb": common.gb(pk.peak), "max_rss_gb": common.gb(max_rss),
        "peak_vram_gb": common.gb(peak_vram) if peak_vram is not None else None,
        "load_s": round(load_s, 1), "train_wall_s": round(train_wall, 1), "adapter_dir": str(run_dir / "bench-adapter"),
        "compute_dtype": "bfloat16" if trainer.args.bf16 else "float16" if trainer.args.fp16 else "float32", **extra,
    }
    return out


def _rows(cfg, run_dir, tok):
    from studio import stages
    from studio.train import sft
    logging_off()
    tr, ev, _ = sft.prepare(stages.get("sft"), cfg, run_dir, tok)
    return list(tr), list(ev) if ev is not None else [], None


def logging_off():
    import logging
    logging.getLogger("studio").setLevel(logging.WARNING)


def _studio(cfg, run_dir):
    """Exactly what `studio train` builds: build_trainer + the metrics callback (metrics.jsonl, status.json)."""
    from studio.train.callback import TokenCounter, make_callback
    from studio.train.lifecycle import StopRequest, setup_logging
    from studio.train.recipe import build_trainer
    setup_logging(run_dir)
    counter = TokenCounter()
    timer = make_timer(lambda: (counter.input_tokens, counter.trained_tokens, counter.input_tokens))
    cb = make_callback(run_dir, StopRequest(run_dir), counter)
    trainer, tok, _ = build_trainer(cfg, run_dir, [cb, timer], counter)
    return trainer, tok, timer, {"attn": trainer.model.config._attn_implementation, "levers": cfg.train.levers,
                                 "checkpointing": cfg.train.gradient_checkpointing, "packing": cfg.train.packing}


def _plain(cfg, run_dir, a):
    """The reference: transformers Trainer + peft as their docs show, on the studio's tokenised rows."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, DataCollatorForSeq2Seq,
                              Trainer, TrainingArguments)

    from studio.models import resolve_source

    path = resolve_source(cfg.model.source)
    cuda = torch.cuda.is_available()
    if not cuda:
        from studio.train.recipe import set_threads
        set_threads(cfg.train.threads)  # the same thread count on both sides (torch's default is the same here)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    from studio.env.devices import cuda_dtype_name
    dtype = getattr(torch, cuda_dtype_name()) if cuda else torch.float32  # bf16 only from compute capability 8
    kw = {"dtype": dtype}
    if cfg.model.quantization == "nf4":
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kw["device_map"] = {"": "cuda" if cuda else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    if cfg.model.quantization == "nf4":
        model = prepare_model_for_kbit_training(model)  # the peft QLoRA recipe (turns checkpointing on too)
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    train_rows, _, _ = _rows(cfg, run_dir, tok)
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "attention_mask": [1] * len(r["input_ids"]),
                             "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["assistant_masks"])]}
                            for r in train_rows])
    counts = [0, 0, 0]  # non-padding tokens, trained tokens, positions computed (padding included)

    class CountingTrainer(Trainer):  # instrument only: counts what each step computes
        def training_step(self, model, inputs, num_items_in_batch=None):
            counts[0] += int(inputs["attention_mask"].sum())
            counts[1] += int((inputs["labels"] != -100).sum())
            counts[2] += int(inputs["attention_mask"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    t = cfg.train
    timer = make_timer(lambda: tuple(counts))
    args = TrainingArguments(
        output_dir=str(run_dir / "plain"), per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio, max_steps=t.max_steps, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, seed=t.seed, data_seed=t.seed,  # optimiser: Trainer's default
        gradient_checkpointing=True, logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
        use_cpu=not cuda, bf16=cuda and dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16)
    trainer = CountingTrainer(model=model, args=args, train_dataset=ds, callbacks=[timer],
                              data_collator=DataCollatorForSeq2Seq(tok, padding="longest"))
    return trainer, tok, timer, {"attn": model.config._attn_implementation, "checkpointing": True,
                                 "packing": False}


# --- the parent -------------------------------------------------------------------------------

def order(sides: list[str], repeats: int) -> list[str]:
    """a b, then b a, then a b ...: each side runs early and late equally often."""
    out = []
    for i in range(repeats):
        out += sides if i % 2 == 0 else sides[::-1]
    return out


def child_args(a, side: str) -> list[str]:
    argv = ["--child", side, "--model", a.model, "--data", a.data, "--quantization", a.quantization,
            "--r", str(a.r), "--dropout", str(a.dropout), "--max-length", str(a.max_length),
            "--batch-size", str(a.batch_size), "--grad-accum", str(a.grad_accum), "--steps", str(a.steps),
            "--lr", str(a.lr), "--threads", str(a.threads), "--levers", a.levers, "--compute-dtype", a.compute_dtype]
    if a.alpha:
        argv += ["--alpha", str(a.alpha)]
    if a.no_packing:
        argv.append("--no-packing")
    if a.checkpointing:
        argv.append("--checkpointing")
    return argv


def summarise(runs: list[dict]) -> dict:
    """Median of repeats per figure (one run: that run)."""
    keys = ("tokens_per_s", "trained_tokens_per_s", "s_per_step", "max_rss_gb", "peak_rss_train_gb",
            "peak_vram_gb", "final_train_loss", "heldout_loss", "tokens", "positions")
    out = {}
    for k in keys:
        vals = [r[k] for r in runs if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    return out


def main(argv=None) -> int:
    a = parse(argv)
    if a.child:
        common.write_json(a.out, child(a))
        return 0
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    info = {"date": common.now(), "machine": common.machine(), "versions": common.versions(),
            "command": "python bench/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "args": {k: v for k, v in vars(a).items() if k not in ("child", "out")}}
    print(f"# {info['command']}\n# {info['date']}  {info['machine']['cpu']}, {info['machine']['cores']} cores",
          flush=True)
    info["load_before"] = common.load_snapshot()
    print(f"# load before: {info['load_before']}", flush=True)
    peak = a.peak_gflops or common.cpu_peak_gflops(threads=a.threads or info["machine"]["cores"])
    info["peak_gflops"] = peak
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for side in order(sides, a.repeats):
        t0 = time.time()
        snap = common.load_snapshot()
        r = common.run_child(HERE, child_args(a, side))
        r["load_during"] = snap
        runs[side].append(r)
        print(f"  {side:6s} {r['tokens_per_s']:7.1f} tok/s  {r['s_per_step']:6.2f} s/step  peak RSS "
              f"{r['max_rss_gb']:.2f} GB  loss {r['final_train_loss']:.3f} / held-out {r['heldout_loss']:.3f}  "
              f"({time.time() - t0:.0f} s; other processes used {r['other_cpu_cores']:.2f} cores)", flush=True)
    info["load_after"] = common.load_snapshot()
    info["runs"] = runs
    summ = {s: summarise(v) for s, v in runs.items()}
    info["summary"] = summ

    from transformers import AutoConfig

    from studio.models import resolve_source
    mcfg = AutoConfig.from_pretrained(resolve_source(a.model))
    first = runs[sides[0]][0]
    avg_len = first["tokens"] / max(1, first["steps"] * a.batch_size * a.grad_accum)
    fpt = common.lora_flops_per_token(mcfg, avg_len)
    info["flops_per_token"] = fpt
    info["bound_tokens_per_s"] = peak * 1e9 / fpt
    print(f"\nmodel FLOPs per trained-on token {fpt / 1e6:.0f} M; at {peak:.0f} GFLOP/s the bound is "
          f"{info['bound_tokens_per_s']:.0f} tokens/s")
    hdr = f"{'':8s}{'tok/s':>9s}{'s/step':>9s}{'peak RSS GB':>13s}{'train loss':>12s}{'held-out':>10s}{'MFU':>7s}"
    print(hdr)
    for s in sides:
        m = summ[s]
        m["mfu"] = m["tokens_per_s"] * fpt / (peak * 1e9)
        mem = m["peak_vram_gb"] if m["peak_vram_gb"] is not None else m["max_rss_gb"]
        print(f"{s:8s}{m['tokens_per_s']:9.1f}{m['s_per_step']:9.2f}{mem:13.2f}{m['final_train_loss']:12.3f}"
              f"{m['heldout_loss']:10.3f}{100 * m['mfu']:6.1f}%")
    if "studio" in summ and "plain" in summ:
        st, pl = summ["studio"], summ["plain"]
        mem_key = "peak_vram_gb" if st["peak_vram_gb"] is not None else "max_rss_gb"
        ratios = {"tokens_per_s": st["tokens_per_s"] / pl["tokens_per_s"],
                  "s_per_step": st["s_per_step"] / pl["s_per_step"],
                  "peak_memory": st[mem_key] / pl[mem_key],
                  "heldout_loss_diff": st["heldout_loss"] - pl["heldout_loss"],
                  "train_loss_diff": st["final_train_loss"] - pl["final_train_loss"]}
        info["ratios"] = ratios
        print(f"studio/plain: {ratios['tokens_per_s']:.2f}x tokens/s, {ratios['s_per_step']:.2f}x s/step, "
              f"{ratios['peak_memory']:.2f}x peak memory, held-out loss {ratios['heldout_loss_diff']:+.3f}, "
              f"train loss {ratios['train_loss_diff']:+.3f} (same {int(st['tokens'])} tokens; plain computed "
              f"{int(pl['positions'])} positions with padding)")
    print(f"# load after: {info['load_after']}")
    if a.json:
        common.write_json(a.json, info)
        print(f"# figures written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
