"""Each speed/memory lever of the studio trainer measured on its own: the trainer with everything on
against the trainer with one lever off (or one setting changed), in alternating child processes.

    python bench/levers.py                        # the default set below, 8 steps each, 2 rounds
    python bench/levers.py --only varlen,lmhead   # some of them
    python bench/levers.py --micro                # also the LM-head metrics and dropout micro-benchmarks

A lever is switched off by replacing its helper in studio.train with a no-op before build_trainer runs
(the same code path a run takes otherwise); settings (threads, dtype, quantisation, checkpointing) go
through the run config like a user's.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import throughput  # noqa: E402

HERE = Path(__file__).resolve()

# name -> (what it is, extra throughput flags, lever helpers switched off, steps)
VARIANTS = {
    "all": ("studio trainer, every lever on", [], [], None),
    "varlen": ("stock SDPA with the packed block mask instead of per-row attention", [], ["varlen"], None),
    "lmhead": ("TRL's fused LM head on every position instead of labelled ones only", [], ["lmhead"], None),
    "dropout": ("peft's nn.Dropout instead of the fused dropout+A matmul", [], ["dropout"], None),
    "own": ("keep the model file mapped after the 4-bit load", [], ["own"], None),
    "swiglu": ("autograd's silu(gate) * up instead of the SwiGLU function", [], ["swiglu"], None),
    "bins": ("TRL bfd packing into max_length bins (the studio's previous default)", [], ["bins"], 4),
    "threads1": ("torch.set_num_threads(1) instead of 2", ["--threads", "1"], [], None),
    "checkpointing": ("gradient checkpointing on", ["--checkpointing"], [], None),
    "fp32base": ("plain LoRA on the fp32 base (quantization none)", ["--quantization", "none"], [], None),
    "bf16": ("compute dtype bfloat16 on CPU", ["--compute-dtype", "bfloat16"], [], 3),
    "malloc4m": ("glibc mmap threshold fixed at 4 MB", [], ["+malloc4m"], None),
    "loopadam": ("AdamW as a loop over tensors instead of fused (CUDA; the CPU uses the loop)", [], ["fusedadam"],
                 None),
}
DEFAULT = ["all", "varlen", "lmhead", "dropout", "swiglu", "own", "threads1", "checkpointing", "fp32base"]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(DEFAULT), help=f"variants, from: {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--micro", action="store_true", help="also run the in-process micro-benchmarks")
    p.add_argument("--json", default=None)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--off", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--compute-dtype", default="auto", help=argparse.SUPPRESS)
    return p.parse_known_args(argv)


def switch_off(levers: list[str]) -> None:
    from studio import train
    for lever in levers:
        if lever == "varlen":
            train._use_varlen_attention = lambda model: model.config._attn_implementation
        elif lever == "lmhead":
            train._compact_lm_head = lambda base: False
        elif lever == "dropout":
            train._fuse_lora_dropout = lambda model: 0
        elif lever == "swiglu":
            train._fuse_swiglu = lambda model: 0
        elif lever == "own":
            train._own_weights = lambda model: 0
        elif lever == "bins":
            train._batching = lambda t: dict(packing=True, packing_strategy="bfd", padding_free=True,
                                             max_length=t.max_length, train_sampling_strategy="random")
        elif lever == "fusedadam":
            train._optimizer = lambda name, on_cuda: name
        elif lever == "+malloc4m":
            ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        else:
            raise SystemExit(f"unknown lever {lever}")


def child(a, rest) -> dict:
    switch_off([x for x in a.off.split(",") if x])
    ta = throughput.parse(rest + ["--steps", str(a.steps), "--child", "studio"])
    ta.out = a.out
    if a.compute_dtype != "auto":
        orig = throughput.studio_config

        def cfg_with_dtype(x):
            return orig(x).replace(model={"compute_dtype": a.compute_dtype})
        throughput.studio_config = cfg_with_dtype
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
            _, flags, off, steps = VARIANTS[n]
            args = ["--child", "x", "--steps", str(steps or a.steps), *flags]
            if off:
                args += ["--off", ",".join(off)]
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
