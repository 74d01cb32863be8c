"""QLoRA on a lent GPU: a Llama-3-8B-shaped model with random weights, 4-bit NF4, r=16, rows up to 2048 tokens.

    python bench/gpu_qlora.py                  # studio vs plain, then studio with gradient checkpointing
    python bench/gpu_qlora.py --steps 6 --batch-size 4 --workdir /tmp/qlora8b

What it does, all on the GPU machine (nothing is downloaded):
1. writes --workdir/model: Llama-3-8B's shape (hidden 4096, 32 layers, 32 heads / 8 KV heads, MLP 14336,
   vocab 128256) as a config.json plus random bf16 safetensors (16 GB, made on the GPU), and the demo
   model's tokenizer (ids < 49152 are valid in the 128k vocabulary);
2. writes --workdir/rows.jsonl: chat rows whose token lengths spread evenly over 256..2048, so a padded
   batch of 4 wastes about a third of its positions, as real data does;
3. runs bench/throughput.py on them (studio and plain reference in alternating child processes): tokens/s,
   peak allocated VRAM, and model-FLOP utilisation against this GPU's measured bf16 matmul peak;
4. where liger-kernel is installed (train.levers auto turns it on on CUDA), the studio side once more without it;
5. runs the studio side once more with gradient checkpointing (the memory-lean setting).

The device image has torch, transformers, peft and accelerate but not bitsandbytes, TRL or datasets:
carry them as wheels (.whl, see /work/.library/device/README.md and bench/RESULTS.md for the exact list) and
start the command with the pip install line from there. The tokenizer travels in .gpu_carry/tokenizer
(`python bench/gpu_qlora.py --stage-tokenizer` here copies it there).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=8192,
                 rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu")
CARRY = common.ROOT / ".gpu_carry" / "tokenizer"
# bf16 dense tensor-core peak from the datasheets (no sparsity), for the MFU column next to the measured one
DATASHEET_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}
WORDS = ("the of and to in is it that for on with as was at by be this are from or have an they which one you "
         "were her all she there would their we him been has when who will more no if out so said what up its "
         "about into than them can only other new some could time these two may then do first any my now such "
         "like our over man me even most made after also did many before must through back years where much "
         "your way well down should because each just those people how too little state good very make world "
         "still own see men work long get here between both life being under never day same another know while "
         "last might us great old year off come since against go came right used take three ship sea gold map "
         "sail crew island storm anchor parrot treasure captain harbour wind wave rope deck cannon flag").split()


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/qlora8b")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a quick try (default: 32, as 8B)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: .gpu_carry/tokenizer, else demo)")
    p.add_argument("--skip-ckpt", action="store_true", help="leave out the studio + checkpointing run")
    p.add_argument("--stage-tokenizer", action="store_true", help="copy the demo tokenizer to .gpu_carry and stop")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def tokenizer_dir(a) -> Path:
    if a.tokenizer:
        return Path(a.tokenizer)
    if (CARRY / "tokenizer.json").is_file():
        return CARRY
    from studio.env.paths import demo_dir
    return demo_dir()


def stage_tokenizer() -> Path:
    from studio.models import fetch_demo
    src = fetch_demo()
    CARRY.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "model.safetensors" and f.is_file() and f.name != "config.json":
            shutil.copy2(f, CARRY / f.name)
    return CARRY


def build_model(workdir: Path, tok_dir: Path, layers: int | None) -> Path:
    """config.json + random bf16 weights, made on the GPU and written in 5 GB shards."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = workdir / "model"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    tok = AutoTokenizer.from_pretrained(tok_dir)
    shape = dict(LLAMA3_8B, num_hidden_layers=layers or LLAMA3_8B["num_hidden_layers"])
    cfg = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)  # transformers' own init (normal, std 0.02) on the GPU
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(out, max_shard_size="5GB", safe_serialization=True)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    print(f"# built {n / 1e9:.2f} B-parameter model in {time.time() - t0:.0f} s -> {out}", flush=True)
    return out


def write_rows(workdir: Path, tok_dir: Path, n: int, max_len: int) -> Path:
    """Chat rows: a short question, an answer filling the row to a length drawn from 256..max_len tokens."""
    from transformers import AutoTokenizer
    path = workdir / "rows.jsonl"
    if path.is_file():
        return path
    tok = AutoTokenizer.from_pretrained(tok_dir)
    rng = random.Random(0)
    per_word = len(tok(" ".join(WORDS), add_special_tokens=False)["input_ids"]) / len(WORDS)
    with path.open("w") as f:
        for _ in range(n):
            target = rng.randint(256, max_len)
            q = " ".join(rng.choice(WORDS) for _ in range(12)) + "?"
            words = int((target - 40) / per_word)
            ans = " ".join(rng.choice(WORDS) for _ in range(max(words, 8)))
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": ans}]}) + "\n")
    return path


def bf16_peak_tflops(seconds: float = 3.0) -> float:
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best, end = 0.0, time.time() + seconds
    while time.time() < end:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            a @ b
        e.record()
        torch.cuda.synchronize()
        best = max(best, 10 * 2 * 8192 ** 3 / (s.elapsed_time(e) / 1e3) / 1e12)
    return round(best, 1)


def main(argv=None) -> int:
    a = parse(argv)
    if a.stage_tokenizer:
        print(f"tokenizer staged in {stage_tokenizer()}")
        return 0
    import torch
    if not torch.cuda.is_available():
        print("No CUDA device here: this benchmark needs a GPU (see bench/RESULTS.md for how it is run on one).")
        return 2
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_dir(a)
    name = torch.cuda.get_device_name()
    measured = bf16_peak_tflops()
    sheet = next((v for k, v in DATASHEET_TFLOPS.items() if k in name), None)
    print(f"# {name}: bf16 matmul {measured} TFLOP/s measured, datasheet {sheet}", flush=True)
    model_dir = build_model(workdir, tok, a.layers)
    rows = write_rows(workdir, tok, a.rows, a.max_length)
    import throughput
    base = ["--model", str(model_dir), "--data", str(rows), "--quantization", "nf4", "--r", "16",
            "--max-length", str(a.max_length), "--batch-size", str(a.batch_size), "--steps", str(a.steps),
            "--peak-gflops", str(measured * 1000)]
    results = {"device": name, "bf16_tflops_measured": measured, "bf16_tflops_datasheet": sheet,
               "versions": common.versions(), "date": common.now()}
    out1 = workdir / "studio_vs_plain.json"
    throughput.main(base + ["--json", str(out1)])
    results["studio_vs_plain"] = json.loads(out1.read_text())
    from studio.train import speed
    if speed.liger_available():  # "auto" turned Liger on above: measure the studio without it
        out3 = workdir / "studio_no_liger.json"
        throughput.main(base + ["--sides", "studio", "--levers", "none", "--json", str(out3)])
        results["studio_without_liger"] = json.loads(out3.read_text())
        off = results["studio_without_liger"]["summary"]["studio"]
        on = results["studio_vs_plain"]["summary"]["studio"]
        print(f"Liger on / off: {on['tokens_per_s'] / off['tokens_per_s']:.2f}x tokens/s, "
              f"{on['peak_vram_gb'] / off['peak_vram_gb']:.2f}x peak VRAM")
    if not a.skip_ckpt:
        out2 = workdir / "studio_ckpt.json"
        throughput.main(base + ["--sides", "studio", "--checkpointing", "--json", str(out2)])
        results["studio_checkpointing"] = json.loads(out2.read_text())
        st = results["studio_checkpointing"]["summary"]["studio"]
        pl = results["studio_vs_plain"]["summary"]["plain"]
        print(f"studio+checkpointing / plain: {st['tokens_per_s'] / pl['tokens_per_s']:.2f}x tokens/s, "
              f"{st['peak_vram_gb'] / pl['peak_vram_gb']:.2f}x peak VRAM")
    # the memory estimator against the measured peaks
    from studio.memory import estimate
    for key, r in (("studio_vs_plain", results["studio_vs_plain"]),
                   ("studio_checkpointing", results.get("studio_checkpointing"))):
        if not r:
            continue
        run = r["runs"]["studio"][0]
        args = r["args"]
        cfg = throughput.studio_config(argparse.Namespace(**args))
        avg_row = run["tokens"] / max(1, run["steps"] * a.batch_size)
        e = estimate(cfg, "cuda", row_tokens=avg_row * 1.3)
        alloc_est = e.total_gb - e.breakdown.get("overhead", 0)
        results.setdefault("estimator", {})[key] = {"estimate_gb": e.total_gb, "estimate_allocated_gb": alloc_est,
                                                    "measured_peak_allocated_gb": run["peak_vram_gb"]}
        print(f"estimator ({key}): {alloc_est:.2f} GB allocated vs measured {run['peak_vram_gb']:.2f} GB "
              f"({100 * (alloc_est / run['peak_vram_gb'] - 1):+.0f}%)")
    if a.json:
        common.write_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
