"""The studio against LLaMA-Factory, the peer users would pick, side by side in one run (issue 11).

    python bench/peer_llamafactory.py                       # the four settings below, 30 steps each
    python bench/peer_llamafactory.py --only fp32-ckpt      # one of them
    python bench/peer_llamafactory.py --json bench/results/peer-llamafactory.json
    python bench/peer_llamafactory.py --rounds 3           # each cell the median of 3 runs (the spread here: +-10%)

LLaMA-Factory lives in its own virtualenv under $STUDIO_HOME/peers/lf-venv (made on first use, never in the
project's environment): torch==2.13.0 first and as a constraint, so the resolver cannot swap in a CUDA build;
PyPI's torchvision/torchaudio are CUDA builds that break `import transformers`, so they are removed and
LLaMA-Factory's unconditional `import torchaudio` gets a stub package.

Same model (the demo SmolLM2-135M), same data (the project's sample: its first --rows rows, as alpaca
instruction/output for LLaMA-Factory, the same file for the studio), r16 alpha32 dropout 0.05 on all linear
layers, batch 4, --steps steps, lr 2e-4 cosine with 3% warm-up, cutoff 256, one process each, alternating.
Per side: non-padding tokens per second of train() wall time (warm-up included on both sides), seconds per
step, peak RSS of the whole process (ru_maxrss), the mean train loss of the last 5 steps. Settings:

  fp32-ckpt   fp32 LoRA, gradient checkpointing on (LLaMA-Factory's default)
  fp32        fp32 LoRA, checkpointing off
  bf16-ckpt   bf16 autocast, fp32 LoRA weights (LLaMA-Factory `bf16: true`, the studio's compute_dtype bfloat16),
              checkpointing on
  bf16        the same, checkpointing off
  default     each side's default: LLaMA-Factory fp32 + checkpointing; the studio NF4, checkpointing off, auto
              (bf16 autocast where this CPU's probe measured it faster, else fp32)
  default-ckpt  the same with the studio's gradient checkpointing turned on (LLaMA-Factory's default has it)

Both sides train on the same --rows rows (the studio with eval fraction 0, as LLaMA-Factory without val_size).
Their logged train losses are not comparable as they stand: their steps need not hold the same rows (step 1's
loss, the base model's on the first batch since LoRA B starts at zero, differs: 3.263 vs 3.147), and
LLaMA-Factory also labels the "\n" after <|im_end|> (a token the model never has to generate, with ~0
loss). So the loss that decides is the held-out loss: the sample's rows after the first --rows, scored by
one scorer (bench/throughput.heldout_loss: the studio's tokenisation, the answer tokens and <|im_end|>) on the
fp32 base with each side's saved adapter, in one child process. MFU = tokens/s x model FLOPs per token
(bench/common.lora_flops_per_token) / this CPU's measured GEMM peak in the precision the side computes in.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets HF_HUB_OFFLINE and the import path)

HERE = Path(__file__).resolve()
THROUGHPUT = HERE.parent / "throughput.py"
LF_VERSION = "0.9.5"
SETTINGS = {  # name: (LLaMA-Factory yaml keys, studio throughput.py flags)
    "fp32-ckpt": ({"bf16": False}, ["--quantization", "none", "--compute-dtype", "float32", "--checkpointing"]),
    "fp32": ({"bf16": False, "disable_gradient_checkpointing": True},
             ["--quantization", "none", "--compute-dtype", "float32"]),
    "bf16-ckpt": ({"bf16": True}, ["--quantization", "none", "--compute-dtype", "bfloat16", "--checkpointing"]),
    "bf16": ({"bf16": True, "disable_gradient_checkpointing": True},
             ["--quantization", "none", "--compute-dtype", "bfloat16"]),
    "default": ({"bf16": False}, []),
    "default-ckpt": ({"bf16": False}, ["--checkpointing"]),
}


def lf_env() -> Path:
    """The LLaMA-Factory virtualenv's python, made on first use."""
    from studio.env.paths import studio_home
    home = studio_home() / "peers"
    py = home / "lf-venv" / "bin" / "python"
    if py.is_file() and subprocess.run([str(py), "-c", "import llamafactory"], capture_output=True).returncode == 0:
        return py
    home.mkdir(parents=True, exist_ok=True)
    print(f"# installing LLaMA-Factory {LF_VERSION} into {home / 'lf-venv'} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(home / "lf-venv")], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    (home / "constraints.txt").write_text("torch==2.13.0\n")
    subprocess.run([*pip, "-c", str(home / "constraints.txt"), f"llamafactory=={LF_VERSION}"], check=True)
    subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchaudio"], check=True)
    site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stub = Path(site) / "torchaudio"
    stub.mkdir(exist_ok=True)
    (stub / "__init__.py").write_text('"""Stub: LLaMA-Factory imports torchaudio; the bench uses no audio."""\n')
    return py


def alpaca_rows(n: int) -> list[dict]:
    """The project's sample as alpaca rows (single-turn user/assistant pairs)."""
    rows = []
    for line in common.SAMPLE.read_text(encoding="utf-8").splitlines()[:n]:
        msgs = json.loads(line)["messages"]
        user = next(m["content"] for m in msgs if m["role"] == "user")
        answer = next(m["content"] for m in msgs if m["role"] == "assistant")
        rows.append({"instruction": user, "input": "", "output": answer})
    return rows


def score(adapters: list[str], heldout: Path) -> list[float]:
    """Held-out loss of each adapter, by one scorer (in a child of its own): on the fp32 demo base, or for
    "DIR@nf4" on the base in 4-bit NF4 (fp32 compute), the base a QLoRA adapter was trained against."""
    r = common.run_child(HERE, ["--child-score", str(heldout), *adapters])
    return r["losses"]


def _score_child(heldout: str, adapters: list[str], out: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import throughput
    from studio.config import ModelSettings
    from studio.data import tokenize_messages
    from studio.models import load_model, load_tokenizer, resolve_source
    path = resolve_source("demo")
    tok = load_tokenizer(path)
    rows = [tokenize_messages(json.loads(x)["messages"], tok, 10**6)
            for x in Path(heldout).read_text(encoding="utf-8").splitlines() if x.strip()]
    losses = []
    for spec in adapters:
        ad, _, base = spec.partition("@")
        model = load_model(path, ModelSettings(source=str(path), quantization="nf4", compute_dtype="float32"), "cpu") \
            if base == "nf4" else AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, ad)
        losses.append(throughput.heldout_loss(model, rows, tok.pad_token_id))
        del model
    common.write_json(out, {"losses": losses, "rows": len(rows)})


def run_lf(py: Path, model_dir: Path, data_dir: Path, a, keys: dict) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-lf-"))
    cfg = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "lora",
           "lora_rank": a.r, "lora_alpha": 2 * a.r, "lora_dropout": 0.05, "lora_target": "all",
           "dataset": "studio_sample", "dataset_dir": str(data_dir), "template": "smollm2",
           "cutoff_len": a.max_length, "overwrite_cache": True, "preprocessing_num_workers": 1,
           "output_dir": str(out / "out"), "logging_steps": 1, "save_strategy": "no", "plot_loss": False,
           "overwrite_output_dir": True, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
           "learning_rate": 2e-4, "max_steps": a.steps, "lr_scheduler_type": "cosine", "warmup_ratio": 0.03,
           "use_cpu": True, "report_to": "none", "include_num_input_tokens_seen": "non_padding",
           "dataloader_num_workers": 0, "seed": 42, **keys}
    (out / "cfg.yaml").write_text(json.dumps(cfg))  # JSON is YAML; LF 0.9.5 reads .json configs wrongly
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1", "OMP_NUM_THREADS": str(a.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.time()
    res = subprocess.run(["/usr/bin/time", "-v", str(py.parent / "llamafactory-cli"), "train", str(out / "cfg.yaml")],
                         capture_output=True, text=True, env=env, cwd=out)
    if res.returncode != 0:
        raise RuntimeError(f"LLaMA-Factory failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    results = json.loads((out / "out" / "all_results.json").read_text())
    log = [json.loads(x) for x in (out / "out" / "trainer_log.jsonl").read_text().splitlines() if x.strip()]
    losses = [e["loss"] for e in log if "loss" in e]
    tokens = results.get("num_input_tokens_seen") or log[-1].get("total_tokens")
    runtime = results["train_runtime"]
    return {"side": "llamafactory", "tokens": tokens, "train_runtime_s": runtime, "tokens_per_s": tokens / runtime,
            "s_per_step": runtime / a.steps, "max_rss_gb": round(rss_kb / 2**20, 2), "loss_curve": losses,
            "final_train_loss": sum(losses[-5:]) / len(losses[-5:]), "wall_s": round(time.time() - t0, 1),
            "dtype": "bfloat16" if keys.get("bf16") else "float32", "adapter_dir": str(out / "out")}


def run_studio(data: Path, a, flags: list[str]) -> dict:
    r = common.run_child(THROUGHPUT, ["--child", "studio", "--data", str(data), "--steps", str(a.steps),
                                      "--max-length", str(a.max_length), "--r", str(a.r), "--dropout", "0.05",
                                      "--threads", str(a.threads), "--eval-fraction", "0", *flags])
    # the same measure as LLaMA-Factory's: non-padding tokens over the whole train() (warm-up step included)
    return {"side": "studio", "tokens": r["tokens"], "train_runtime_s": r["train_wall_s"],
            "tokens_per_s": r["tokens"] / r["train_wall_s"], "s_per_step": r["train_wall_s"] / r["steps"],
            "max_rss_gb": r["max_rss_gb"], "final_train_loss": r["final_train_loss"], "loss_curve": r["loss_curve"],
            "wall_s": r["child_wall_s"], "dtype": r["compute_dtype"], "adapter_dir": r["adapter_dir"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(list(SETTINGS)[:5]), help=f"settings to run: {', '.join(SETTINGS)}")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="runs per side and setting; the median one is reported")
    p.add_argument("--json", default=None)
    p.add_argument("--child-score", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a, rest = p.parse_known_args(argv)
    if a.child_score:
        _score_child(a.child_score, rest, a.out)
        return 0
    from studio.models import resolve_source
    model_dir = resolve_source("demo")
    py = lf_env()
    lf_version = subprocess.run([str(py), "-c", "import llamafactory, transformers, peft, trl; print("
                                 "llamafactory.__version__, transformers.__version__, peft.__version__, "
                                 "trl.__version__)"], capture_output=True, text=True).stdout.split()
    work = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    rows = alpaca_rows(a.rows)
    (work / "sample.json").write_text(json.dumps(rows))
    (work / "dataset_info.json").write_text(json.dumps({"studio_sample": {"file_name": "sample.json"}}))
    studio_data = work / "sample.jsonl"
    studio_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    heldout = work / "heldout.jsonl"  # the sample's rows after the training rows, in its own messages format
    heldout.write_text("".join(x + "\n" for x in common.SAMPLE.read_text(encoding="utf-8").splitlines()[a.rows:]))
    info = {"date": common.now(), "machine": common.machine(), "versions": common.versions(),
            "llamafactory": dict(zip(("llamafactory", "transformers", "peft", "trl"), lf_version)),
            "args": vars(a), "load_before": common.load_snapshot(), "runs": {}}
    peaks = {dt: common.cpu_peak_gflops(threads=a.threads, dtype=dt) for dt in ("float32", "bfloat16")}
    from transformers import AutoConfig
    mcfg = AutoConfig.from_pretrained(model_dir)
    info["peak_gflops"] = peaks
    print(f"# {info['date']}  {info['machine']['cpu']}, {info['machine']['cores']} cores; LLaMA-Factory "
          f"{info['llamafactory']}; {a.rows} rows, {a.steps} steps, cutoff {a.max_length}; GEMM peak fp32 "
          f"{peaks['float32']:.0f}, bf16 {peaks['bfloat16']:.0f} GFLOP/s", flush=True)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    for i, name in enumerate(names):
        keys, flags = SETTINGS[name]
        runs = {"llamafactory": [], "studio": []}
        for rnd in range(a.rounds):
            first = (i + rnd) % 2 == 0  # alternate who goes first, across rows and rounds
            for side in ("llamafactory", "studio") if first else ("studio", "llamafactory"):
                r = run_lf(py, model_dir, work, a, keys) if side == "llamafactory" else \
                    run_studio(studio_data, a, flags)
                fpt = common.lora_flops_per_token(mcfg, r["tokens"] / (a.steps * 4))
                r["mfu"] = r["tokens_per_s"] * fpt / (peaks[r["dtype"]] * 1e9)
                runs[side].append(r)
                print(f"  {name:10s} {side:12s} {r['tokens_per_s']:7.1f} tok/s  {r['s_per_step']:5.2f} s/step  peak "
                      f"RSS {r['max_rss_gb']:.2f} GB  loss {r['final_train_loss']:.3f}  {r['dtype']}, MFU "
                      f"{100 * r['mfu']:.1f}%", flush=True)
        # the median run of each side (by tokens/s); training is seeded, so every round's adapter is the same one
        st, lf = (sorted(runs[side], key=lambda r: r["tokens_per_s"])[(a.rounds - 1) // 2]
                  for side in ("studio", "llamafactory"))
        nf4 = "--quantization" not in flags  # the studio's default trains on an NF4 base
        specs = [st["adapter_dir"], lf["adapter_dir"]] + ([st["adapter_dir"] + "@nf4"] if nf4 else [])
        losses = score(specs, heldout)
        st["heldout_loss"], lf["heldout_loss"] = losses[:2]
        also = ""
        if nf4:
            st["heldout_loss_nf4_base"] = losses[2]
            also = f"; the studio's on its NF4 base {losses[2]:.3f}"
        ratio = st["tokens_per_s"] / lf["tokens_per_s"]
        print(f"  {name:10s} studio / LLaMA-Factory ({'median of ' + str(a.rounds) if a.rounds > 1 else 'one run'}): "
              f"{ratio:.2f}x tokens/s, {st['max_rss_gb'] / lf['max_rss_gb']:.2f}x peak RSS; held-out loss on the fp32 "
              f"base {st['heldout_loss']:.3f} vs {lf['heldout_loss']:.3f} "
              f"({st['heldout_loss'] - lf['heldout_loss']:+.3f}){also}", flush=True)
        info["runs"][name] = {"studio": st, "llamafactory": lf, "all": runs, "ratio_tokens_per_s": ratio}
    print("\n| setting | LLaMA-Factory | studio | tokens/s | peak RSS | held-out loss |\n|---|---|---|---|---|---|")
    for name, r in info["runs"].items():
        st, lf = r["studio"], r["llamafactory"]
        cell = "{:.1f} tok/s, {:.2f} GB, MFU {:.0f}%".format
        print(f"| {name} | {cell(lf['tokens_per_s'], lf['max_rss_gb'], 100 * lf['mfu'])} | "
              f"{cell(st['tokens_per_s'], st['max_rss_gb'], 100 * st['mfu'])} | {r['ratio_tokens_per_s']:.2f}x | "
              f"{st['max_rss_gb'] / lf['max_rss_gb']:.2f}x | {st['heldout_loss']:.3f} vs {lf['heldout_loss']:.3f} |")
    info["load_after"] = common.load_snapshot()
    if a.json:
        common.write_json(a.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
