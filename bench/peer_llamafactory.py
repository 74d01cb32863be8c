"""The studio against LLaMA-Factory, the peer users would pick, side by side in one run (issue 11).

    python bench/peer_llamafactory.py                       # the four settings below, 30 steps each
    python bench/peer_llamafactory.py --only fp32-ckpt      # one of them
    python bench/peer_llamafactory.py --json bench/results/peer-llamafactory.json

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
  bf16        bf16 autocast on LLaMA-Factory (`bf16: true`); the studio's compute_dtype bfloat16
  default     each side's default: LLaMA-Factory fp32 + checkpointing; the studio NF4, checkpointing off, auto
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
    "bf16": ({"bf16": True}, ["--quantization", "none", "--compute-dtype", "bfloat16"]),
    "default": ({"bf16": False}, []),
}


def lf_env() -> Path:
    """The LLaMA-Factory virtualenv's python, made on first use."""
    from studio.models import studio_home
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
            "s_per_step": runtime / a.steps, "max_rss_gb": round(rss_kb / 2**20, 2),
            "final_train_loss": sum(losses[-5:]) / len(losses[-5:]), "wall_s": round(time.time() - t0, 1)}


def run_studio(data: Path, a, flags: list[str]) -> dict:
    r = common.run_child(THROUGHPUT, ["--child", "studio", "--data", str(data), "--steps", str(a.steps),
                                      "--max-length", str(a.max_length), "--r", str(a.r), "--dropout", "0.05",
                                      "--threads", str(a.threads), *flags])
    # the same measure as LLaMA-Factory's: non-padding tokens over the whole train() (warm-up step included)
    return {"side": "studio", "tokens": r["tokens"], "train_runtime_s": r["train_wall_s"],
            "tokens_per_s": r["tokens"] / r["train_wall_s"], "s_per_step": r["train_wall_s"] / r["steps"],
            "max_rss_gb": r["max_rss_gb"], "final_train_loss": r["final_train_loss"],
            "heldout_loss": r["heldout_loss"], "wall_s": r["child_wall_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(SETTINGS), help=f"settings to run: {', '.join(SETTINGS)}")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
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
    info = {"date": common.now(), "machine": common.machine(), "versions": common.versions(),
            "llamafactory": dict(zip(("llamafactory", "transformers", "peft", "trl"), lf_version)),
            "args": vars(a), "load_before": common.load_snapshot(), "runs": {}}
    print(f"# {info['date']}  {info['machine']['cpu']}, {info['machine']['cores']} cores; LLaMA-Factory "
          f"{info['llamafactory']}; {a.rows} rows, {a.steps} steps, cutoff {a.max_length}", flush=True)
    for i, name in enumerate(n.strip() for n in a.only.split(",") if n.strip()):
        keys, flags = SETTINGS[name]
        sides = ("llamafactory", "studio") if i % 2 == 0 else ("studio", "llamafactory")  # alternate who goes first
        got = {}
        for side in sides:
            got[side] = run_lf(py, model_dir, work, a, keys) if side == "llamafactory" else \
                run_studio(studio_data, a, flags)
            r = got[side]
            print(f"  {name:10s} {side:12s} {r['tokens_per_s']:7.1f} tok/s  {r['s_per_step']:5.2f} s/step  peak RSS "
                  f"{r['max_rss_gb']:.2f} GB  loss {r['final_train_loss']:.3f}", flush=True)
        ratio = got["studio"]["tokens_per_s"] / got["llamafactory"]["tokens_per_s"]
        print(f"  {name:10s} studio / LLaMA-Factory: {ratio:.2f}x tokens/s, "
              f"{got['studio']['max_rss_gb'] / got['llamafactory']['max_rss_gb']:.2f}x peak RSS", flush=True)
        info["runs"][name] = {**got, "ratio_tokens_per_s": ratio}
    info["load_after"] = common.load_snapshot()
    if a.json:
        common.write_json(a.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
