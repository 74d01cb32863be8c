"""Which precision this CPU computes fastest, measured, not looked up in a table of CPU names.

CPUs differ: on an AVX2-only one a bf16 GEMM runs ~100x slower than fp32 (no native bf16 instructions), on
one with AVX512-BF16 it ran 4.4x faster (900 against 203 GFLOP/s at the demo model's hidden size, 2 threads).
`compute_dtype: auto` on the CPU therefore times one GEMM of the model's width in each dtype and picks bf16 when it
is at least RATIO times fp32's rate. Training then runs bf16 autocast (LoRA weights, their gradients and the
optimiser states in fp32); chat and the memory estimate follow the same choice.

A measurement decides every later run on the machine, so it is taken with care (one taken on a busy machine once
cached fp32 for good on a CPU with AVX512-BF16: three probes under load read (fp32, bf16) = (16.5, 1.3), (8.7, 29.2),
(16.2, 4.5) GFLOP/s against (176, 760) quiet):
- ROUNDS interleaved rounds (fp32, bf16, fp32, bf16, ...) at the same size; the best of each dtype counts, since
  another process can only slow a timing down;
- it is kept in $STUDIO_HOME/cpu-precision.json (per CPU, torch version, threads and width) only when it is steady:
  the other processes used under BUSY_CORES cores while it ran, each dtype's median round is within STEADY of its
  best, and it does not contradict the CPU's flags (avx512_bf16 / amx_bf16 present but bf16 slower than fp32).
  Otherwise this run uses it and the next one measures again.
`studio precision` shows the figures; `studio precision --remeasure` measures again and replaces them.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from ..env.devices import physical_cores
from ..env.io import read_json_dict, write_text
from ..env.paths import studio_home

CACHE = "cpu-precision.json"
# bf16 must beat fp32 by this much to be chosen: autocast casts each weight and activation it multiplies
# (bandwidth the GEMM rate does not show), and the LM head's log-softmax stays fp32
RATIO = 1.5
VERSION = 2  # bump when the probe changes: cached figures of an older probe are not comparable
N_OUT = 2048  # output width of the probe GEMM: a slice of the model's MLP, big enough for full vector tiles
M_ROWS = 64  # tokens per probe GEMM (a small micro-batch's worth)
SECONDS = 0.02  # per timing loop: ROUNDS x 2 dtypes of them, ~0.3 s in all
ROUNDS = 6
BUSY_CORES = 0.5  # other processes using more than this many cores while the probe ran: not kept
STEADY = 0.7  # each dtype's median round at least this share of its best round, or not kept
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Measurement:
    """One probe's figures (GFLOP/s) and whether they can be trusted for later runs (`unsteady`: why not)."""
    fp32: float
    bf16: float
    unsteady: str = ""


@dataclass(frozen=True)
class CpuPrecision:
    """One probe's figures (GFLOP/s on `threads` threads, K = `width`) and the dtype they decide. `cached`: read
    back from an earlier run; `unsteady`: why this measurement was used for this run only."""
    fp32: float
    bf16: float
    width: int
    threads: int
    cached: bool = False
    unsteady: str = ""

    @property
    def dtype(self) -> str:
        return decide(self.fp32, self.bf16)

    def line(self) -> str:
        """What train.log (and `studio precision`) says."""
        how = "cached probe" if self.cached else "probe"
        tail = f" (not kept: {self.unsteady}; the next run measures again)" if self.unsteady else ""
        return (f"CPU precision ({how}, K={self.width}, {self.threads} threads): bf16 GEMM {self.bf16:.0f} GFLOP/s, "
                f"fp32 {self.fp32:.0f} GFLOP/s ({self.bf16 / max(self.fp32, 1e-9):.2f}x; bf16 is used from "
                f"{RATIO}x) -> {self.dtype}{tail}")


def decide(fp32_gflops: float, bf16_gflops: float, ratio: float = RATIO) -> str:
    """'bfloat16' where the measured bf16 rate is at least `ratio` x fp32's, else 'float32'."""
    return "bfloat16" if bf16_gflops >= ratio * fp32_gflops else "float32"


def cpu_flags() -> tuple[str, set[str]]:
    """(CPU model name, its flags) from /proc/cpuinfo; ("unknown CPU" or the platform's name, set()) elsewhere."""
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
    return name, flags


def assess(fp32_rounds: list[float], bf16_rounds: list[float], others_cores: float, flags: set[str]) -> Measurement:
    """The figures of interleaved rounds (the best of each dtype) and whether they are steady enough to keep."""
    fp32, bf16 = max(fp32_rounds), max(bf16_rounds)
    why = []
    if others_cores > BUSY_CORES:
        why.append(f"other processes used {others_cores:.1f} cores while it ran")
    for name, rounds in (("fp32", fp32_rounds), ("bf16", bf16_rounds)):
        if len(rounds) > 1 and statistics.median(rounds) < STEADY * max(rounds):
            why.append(f"its {name} rounds varied from {min(rounds):.0f} to {max(rounds):.0f} GFLOP/s")
    native = sorted(flags & set(NATIVE_BF16))
    if native and bf16 < fp32:
        why.append(f"the CPU has {'/'.join(native)} but bf16 measured slower than fp32")
    return Measurement(round(fp32, 1), round(bf16, 1), "; ".join(why))


def _busy_cores() -> tuple[float, float, float]:
    """(all processes' busy CPU seconds, this process's CPU seconds, wall time) now, to tell the load while probing."""
    import psutil
    t = psutil.cpu_times()
    busy = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    me = psutil.Process().cpu_times()
    return busy, me.user + me.system, time.monotonic()


def measure(width: int, seconds: float = SECONDS, rounds: int = ROUNDS, flags: set[str] | None = None) -> Measurement:
    """Figures of a (M_ROWS x width) @ (width x N_OUT) GEMM in fp32 and bf16 on torch's current threads.

    Without native bf16 flags, bf16 is first timed on 8 rows: a CPU without native bf16 (~1.5 GFLOP/s) then costs
    ~0.1 s, not seconds. Otherwise `rounds` interleaved rounds at full size, the best of each dtype counting."""
    import torch

    k = max(64, min(int(width), 8192))
    flags = cpu_flags()[1] if flags is None else flags
    mats = {}

    def rate(dtype, m: int) -> float:
        if (dtype, m) not in mats:
            mats[dtype, m] = torch.randn(m, k, dtype=dtype), torch.randn(N_OUT, k, dtype=dtype)
            mats[dtype, m][0] @ mats[dtype, m][1].t()  # oneDNN builds its kernel on the first call
        a, b = mats[dtype, m]
        reps, t0 = 0, time.perf_counter()
        while True:
            a @ b.t()
            reps += 1
            el = time.perf_counter() - t0
            if el >= seconds:
                return 2 * m * k * N_OUT * reps / el / 1e9

    before = _busy_cores()
    with torch.no_grad():
        fp32s = [rate(torch.float32, M_ROWS)]
        bf16s = [rate(torch.bfloat16, 8)]
        if flags & set(NATIVE_BF16) or bf16s[0] * RATIO >= fp32s[0] / 2:  # plausibly competitive: full rounds
            bf16s = []
            for _ in range(rounds):
                fp32s.append(rate(torch.float32, M_ROWS))
                bf16s.append(rate(torch.bfloat16, M_ROWS))
    after = _busy_cores()
    wall = max(after[2] - before[2], 1e-6)
    others = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall
    return assess(fp32s, bf16s, others, flags)


def machine_key(threads: int, width: int) -> str:
    """What the figures depend on: the CPU (name and its bf16-relevant flags), torch, threads, probe width.
    Read without importing torch, so a cached answer costs no torch import (the memory estimate's promise)."""
    from importlib.metadata import PackageNotFoundError, version
    name, flags = cpu_flags()
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
    return physical_cores()


def cpu_precision(width: int, threads: int | None = None, home: Path | None = None, probe=None,
                  remeasure: bool = False) -> CpuPrecision:
    """This CPU's figures at `width` on `threads` (default: torch's current count): the cached ones, else measured
    (and cached when steady). `probe(width)` -> Measurement or (fp32, bf16) (default `measure`; plain figures count as
    steady) is injectable, so the decision can be tested with given measurements. `remeasure`: ignore the cache.
    torch's thread count is left as it was."""
    threads = threads or default_threads()
    path = Path(home if home is not None else studio_home()) / CACHE
    key = machine_key(threads, width)
    cache = read_json_dict(path)
    hit = cache.get(key)
    if hit and not remeasure:
        try:
            return CpuPrecision(float(hit["fp32"]), float(hit["bf16"]), width, threads, cached=True)
        except (KeyError, TypeError, ValueError):
            pass
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = (probe or measure)(width)
    finally:
        torch.set_num_threads(before)
    m = got if isinstance(got, Measurement) else Measurement(*got)
    out = CpuPrecision(m.fp32, m.bf16, width, threads, unsteady=m.unsteady)
    if m.unsteady:
        return out
    cache[key] = {"fp32": out.fp32, "bf16": out.bf16, "width": width, "threads": threads, "dtype": out.dtype,
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:  # several processes (DDP ranks) may write at once: each writes a whole file and renames it
        write_text(path, json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home measures again next time
    return out


def cached_figures(home: Path | None = None) -> dict:
    """Everything cpu-precision.json holds, key -> figures ({} when nothing was kept)."""
    return read_json_dict(Path(home if home is not None else studio_home()) / CACHE)


__all__ = ["CpuPrecision", "Measurement", "cpu_precision", "measure", "assess", "decide", "machine_key",
           "cached_figures", "RATIO", "CACHE"]
