"""Which precision this CPU computes fastest, measured, not looked up in a table of CPU names.

CPUs differ: on an AVX2-only one a bf16 GEMM runs ~100x slower than fp32 (no native bf16 instructions), on
one with AVX512-BF16 it ran 4.4x faster (900 against 203 GFLOP/s at the demo model's hidden size, 2 threads).
`compute_dtype: auto` on the CPU therefore times one GEMM of the model's width in each dtype (~0.2 s, once
per machine, thread count and width; cached in $STUDIO_HOME/cpu-precision.json) and picks bf16 when it is
at least RATIO times fp32's rate. Training then runs bf16 autocast (LoRA weights, their gradients and the
optimiser states in fp32); chat and the memory estimate follow the same choice. Delete the cache file to
measure again (e.g. after a torch upgrade the key changes by itself).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE = "cpu-precision.json"
# bf16 must beat fp32 by this much to be chosen: autocast casts each weight and activation it multiplies
# (bandwidth the GEMM rate does not show), and the LM head's log-softmax stays fp32
RATIO = 1.5
VERSION = 1  # bump when the probe's shapes change: cached figures of an older probe are not comparable
N_OUT = 2048  # output width of the probe GEMM: a slice of the model's MLP, big enough for full vector tiles
M_ROWS = 64  # tokens per probe GEMM (a small micro-batch's worth)
SECONDS = 0.05  # per timing loop


@dataclass(frozen=True)
class CpuPrecision:
    """One probe's figures (GFLOP/s on `threads` threads, K = `width`) and the dtype they decide."""
    fp32: float
    bf16: float
    width: int
    threads: int
    cached: bool = False

    @property
    def dtype(self) -> str:
        return decide(self.fp32, self.bf16)

    def line(self) -> str:
        """What train.log says."""
        how = "cached probe" if self.cached else "probe"
        return (f"CPU precision ({how}, K={self.width}, {self.threads} threads): bf16 GEMM {self.bf16:.0f} GFLOP/s, "
                f"fp32 {self.fp32:.0f} GFLOP/s ({self.bf16 / max(self.fp32, 1e-9):.2f}x; bf16 is used from "
                f"{RATIO}x) -> {self.dtype}")


def decide(fp32_gflops: float, bf16_gflops: float, ratio: float = RATIO) -> str:
    """'bfloat16' where the measured bf16 rate is at least `ratio` x fp32's, else 'float32'."""
    return "bfloat16" if bf16_gflops >= ratio * fp32_gflops else "float32"


def measure(width: int, seconds: float = SECONDS) -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s of a (M_ROWS x width) @ (width x N_OUT) GEMM on torch's current threads.

    bf16 is first timed on 8 rows, so a CPU without native bf16 (~1.5 GFLOP/s) costs ~0.1 s, not seconds."""
    import torch

    k = max(64, min(int(width), 8192))

    def rate(dtype, m: int) -> float:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(N_OUT, k, dtype=dtype)
        a @ b.t()  # oneDNN builds its kernel on the first call
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b.t()
            reps += 1
            el = time.perf_counter() - t0
            if el >= seconds:
                return 2 * m * k * N_OUT * reps / el / 1e9

    with torch.no_grad():
        fp32 = rate(torch.float32, M_ROWS)
        bf16 = rate(torch.bfloat16, 8)
        if bf16 * RATIO >= fp32 / 2:  # plausibly competitive: time it at full size, and fp32 once more
            bf16 = max(bf16, rate(torch.bfloat16, M_ROWS))
            fp32 = max(fp32, rate(torch.float32, M_ROWS))
    return round(fp32, 1), round(bf16, 1)


def machine_key(threads: int, width: int) -> str:
    """What the figures depend on: the CPU (name and its bf16-relevant flags), torch, threads, probe width.
    Read without importing torch, so a cached answer costs no torch import (the memory estimate's promise)."""
    from importlib.metadata import PackageNotFoundError, version
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        import platform
        name = platform.processor() or name
    have = "+".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags) or "-"
    try:
        tv = version("torch")
    except PackageNotFoundError:
        tv = "?"
    return f"v{VERSION}|{name}|{have}|torch {tv}|{threads}t|K{width}"


def default_threads() -> int:
    """torch's intra-op thread count: its current one once imported, else its default (the physical cores)."""
    import sys
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    import psutil
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def cpu_precision(width: int, threads: int | None = None, home: Path | None = None, probe=None) -> CpuPrecision:
    """This CPU's figures at `width` on `threads` (default: torch's current count), measured once and cached.
    `probe(width) -> (fp32, bf16)` (default `measure`) is injectable, so the decision can be tested with given
    measurements. torch's thread count is left as it was."""
    threads = threads or default_threads()
    if home is None:
        from .models import studio_home
        home = studio_home()
    path = Path(home) / CACHE
    key = machine_key(threads, width)
    try:
        cache = json.loads(path.read_text())
        hit = cache.get(key)
        if hit:
            return CpuPrecision(float(hit["fp32"]), float(hit["bf16"]), width, threads, cached=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        cache = {}
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fp32, bf16 = (probe or measure)(width)
    finally:
        torch.set_num_threads(before)
    out = CpuPrecision(fp32, bf16, width, threads)
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {**{k: v for k, v in asdict(out).items() if k != "cached"}, "dtype": out.dtype,
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:  # several processes (DDP ranks) may write at once: each writes a whole file and renames it
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{CACHE}.{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home measures again next time
    return out
