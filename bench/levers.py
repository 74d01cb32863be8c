"""Each speed lever of the studio trainer measured on its own: the trainer with every lever on against the
trainer with one lever off (or one setting changed), in alternating child processes.

    python bench/levers.py                        # the default set below, 8 steps each, 2 rounds
    python bench/levers.py --only all,lmhead      # some of them
    python bench/levers.py --micro                # also the LM-head and dropout micro-benchmarks

Levers are switched through the run config's `train.levers` (studio.train.speed), the same parameter a user sets;
settings (threads, dtype, quantisation, checkpointing) go through the run config too. Nothing is patched.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import throughput  # noqa: E402

from studio.train import speed  # noqa: E402

HERE = Path(__file__).resolve()
CPU_LEVERS = list(speed.MEASURED["cpu"])


def _without(lever: str) -> list[str]:
    return ["--levers", ",".join(x for x in CPU_LEVERS if x != lever) or "none"]


# name -> (what it is, throughput flags, steps)
VARIANTS = {
    "all": ("studio trainer, every CPU lever on (train.levers: auto)", [], None),
    "none": ("no lever at all (train.levers: none)", ["--levers", "none"], None),
    **{f"-{lv}": (f"without {lv}: {speed.LEVERS[lv]}", _without(lv), None) for lv in CPU_LEVERS},
    "threads1": ("torch.set_num_threads(1) instead of 2", ["--threads", "1"], None),
    "checkpointing": ("gradient checkpointing on", ["--checkpointing"], None),
    "fp32base": ("plain LoRA on the fp32 base (quantization none)", ["--quantization", "none"], None),
    "bf16": ("compute dtype bfloat16 (autocast, fp32 LoRA weights)", ["--compute-dtype", "bfloat16"], None),
    "fp32": ("compute dtype float32 (what auto picks on an AVX2-only CPU)", ["--compute-dtype", "float32"], None),
}
DEFAULT = ["all", "none", *[f"-{lv}" for lv in CPU_LEVERS]]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(DEFAULT), help=f"variants, from: {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--micro", action="store_true", help="also run the in-process micro-benchmarks")
    p.add_argument("--json", default=None)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_known_args(argv)


def child(a, rest) -> dict:
    ta = throughput.parse(rest + ["--steps", str(a.steps), "--child", "studio"])
    ta.out = a.out
    return throughput.child(ta)


def micro() -> dict:
    """LM-head metrics (entropy, top-1) and LoRA dropout, timed in-process on demo-model shapes."""
    import torch
    torch.set_num_threads(2)
    out = {}

    def best(f, n=20):
        f()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(ts)

    W = torch.randn(49152, 576) * 0.02
    h = torch.randn(120, 576, requires_grad=True)  # ~120 labelled positions in a 4-row sample batch
    y = torch.randint(0, 49152, (120,))

    def head(metrics: bool):
        def f():
            logits = torch.nn.functional.linear(h, W)
            lsm = torch.log_softmax(logits, -1)
            if metrics:
                with torch.no_grad():
                    (-(lsm.exp() * lsm).sum(-1)).sum()
                    (logits.argmax(-1) == y).sum()
            lsm.gather(-1, y[:, None]).sum().backward()
        return f
    out["head_ms_with_metrics"] = best(head(True))
    out["head_ms_without_metrics"] = best(head(False))

    x = torch.randn(280, 576)
    A = torch.randn(16, 576)
    out["torch_dropout_ms"] = best(lambda: torch.nn.functional.dropout(x, 0.05, True))
    out["bernoulli_float_ms"] = best(lambda: torch.empty_like(x).bernoulli_(0.95))
    out["rand_ge_p_ms"] = best(lambda: torch.rand(x.shape) >= 0.05)
    out["where_ms"] = best(lambda k=torch.rand(x.shape) >= 0.05: torch.where(k, x, 0.0))
    out["lora_A_mm_ms"] = best(lambda: x @ A.t())
    for th in (1, 2):
        torch.set_num_threads(th)
        out[f"gemm_peak_gflops_{th}t"] = common.cpu_peak_gflops(2.0)
    return out


def main(argv=None) -> int:
    a, rest = parse(argv)
    if a.child:
        common.write_json(a.out, child(a, rest))
        return 0
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    for n in names:
        if n not in VARIANTS:
            raise SystemExit(f"unknown variant {n}: use {', '.join(VARIANTS)}")
    info = {"date": common.now(), "machine": common.machine(), "versions": common.versions(),
            "command": "python bench/levers.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "load_before": common.load_snapshot(), "runs": {n: [] for n in names}}
    print(f"# {info['command']}\n# {info['date']}  load {info['load_before']}", flush=True)
    if a.micro:
        info["micro"] = micro()
        for k, v in info["micro"].items():
            print(f"  micro {k:28s} {v:8.2f}")
    for rnd in range(a.rounds):
        seq = names if rnd % 2 == 0 else names[::-1]
        for n in seq:
            _, flags, steps = VARIANTS[n]
            args = ["--child", "x", "--steps", str(steps or a.steps), *flags]
            snap = common.load_snapshot()
            r = common.run_child(HERE, args)
            r["load_during"] = snap
            info["runs"][n].append(r)
            print(f"  {n:14s} {r['tokens_per_s']:7.1f} tok/s {r['s_per_step']:6.2f} s/step  peak RSS "
                  f"{r['max_rss_gb']:.2f} GB  loss {r['final_train_loss']:.3f}  (others: {r['other_cpu_cores']:.2f} "
                  f"cores)",
                  flush=True)
    print(f"\n{'variant':14s}{'tok/s':>8s}{'vs all':>8s}{'peak RSS':>10s}  what")
    base = statistics.median(r["tokens_per_s"] for r in info["runs"].get("all", [])) if "all" in names else None
    summary = {}
    for n in names:
        tps = statistics.median(r["tokens_per_s"] for r in info["runs"][n])
        rss = statistics.median(r["max_rss_gb"] for r in info["runs"][n])
        summary[n] = {"tokens_per_s": tps, "max_rss_gb": rss, "vs_all": tps / base if base else None}
        rel = f"{tps / base:7.2f}x" if base else ""
        print(f"{n:14s}{tps:8.1f}{rel:>8s}{rss:9.2f}G  {VARIANTS[n][0]}")
    info["summary"] = summary
    info["load_after"] = common.load_snapshot()
    if a.json:
        common.write_json(a.json, info)
        print(f"# figures written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
