"""Shared pieces of the benchmarks: child processes, peak memory, FLOPs, machine facts.

Every measured run happens in a fresh child process (`python bench/<script>.py --child ...`), so one
run's allocations, thread pools and peak RSS never leak into the next, and the parent alternates
the two sides so machine drift (other jobs on a shared 2-core box) hits both.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "assets" / "datasets" / "pirate_qa.jsonl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- memory -----------------------------------------------------------------------------------

class PeakRSS:
    """Samples this process's RSS every `every` s on a thread; `.peak` is the largest seen (bytes).

    ru_maxrss gives the whole-process peak too, but cannot be reset: this one can start at train().
    """

    def __init__(self, every: float = 0.02):
        import psutil
        self.proc = psutil.Process()
        self.every = every
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def max_rss_bytes() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def gb(b: float) -> float:
    return round(b / 1e9, 3)


# --- FLOPs ------------------------------------------------------------------------------------

def matmul_params(cfg) -> tuple[int, int]:
    """(parameters in the decoder's linear layers, parameters of the LM head) from a transformers config."""
    h, L, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    nh, nkv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or h // nh
    attn = h * nh * hd * 2 + h * nkv * hd * 2  # q, o + k, v
    mlp = 3 * h * cfg.intermediate_size       # gate, up, down
    return L * (attn + mlp), v * h


def lora_flops_per_token(cfg, avg_len: float) -> float:
    """Model FLOPs of one LoRA training token: forward (2 per weight) + the gradient w.r.t. the activations
    (2 per weight); frozen weights get no weight gradient. Attention scores counted causally at the mean
    row length. Recomputation (gradient checkpointing) is not model work and is not counted: that is the
    usual MFU convention, and the 120 GFLOP/s x 220 tokens/s bound in the issue uses it (4 x 135M)."""
    lin, head = matmul_params(cfg)
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    nh = cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or h // nh
    attn = 2 * 2 * nh * hd * avg_len / 2 * L  # QK^T and AV over half the row on average, forward
    return 4 * (lin + head) + 2 * attn * 1.5  # backward of attention = 2x forward, all activation grads


def cpu_peak_gflops(seconds: float = 3.0, threads: int | None = None, dtype: str = "float32") -> float:
    """Best GEMM rate seen on large square matrices in `dtype` (this machine's practical matmul peak)."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
    a @ b
    best, t_end = 0.0, time.time() + seconds
    while time.time() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e9)
    return round(best, 1)


# --- machine ----------------------------------------------------------------------------------

def versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    import psutil
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": psutil.cpu_count(logical=False), "logical": psutil.cpu_count(),
            "ram_gb": gb(psutil.virtual_memory().total), "os": platform.platform()}


def load_snapshot() -> dict:
    """Load average and the busiest other processes: whether a figure was taken on a quiet machine."""
    import psutil
    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "name", "cpu_percent"]):
        if p.info["pid"] != me:
            procs.append(p)
    time.sleep(0.5)
    busy = []
    for p in procs:
        try:
            c = p.cpu_percent(None)
            if c > 5:
                busy.append(f"{p.info['name']}:{c:.0f}%")
        except psutil.Error:
            pass
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "busy": busy[:6]}


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# --- child processes --------------------------------------------------------------------------

def run_child(script: Path, args: list[str], timeout: float = 1800) -> dict:
    """Run `python script --child ... --out F` in a fresh process; returns the JSON it wrote.

    Its stderr (training logs) goes to a file next to the JSON so the console stays readable.
    """
    import tempfile
    fd, out = tempfile.mkstemp(prefix="bench-", suffix=".json")
    os.close(fd)
    log = out[:-5] + ".log"
    cmd = [sys.executable, str(script), *args, "--out", out]
    import psutil
    import resource
    busy0 = _busy_seconds(psutil.cpu_times())
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    me0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    with open(log, "w") as lf:
        res = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
    wall = time.time() - t0
    kids1, me1 = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    ours = sum(getattr(b, f) - getattr(a, f) for a, b in ((kids0, kids1), (me0, me1)) for f in ("ru_utime", "ru_stime"))
    # CPU time the rest of the machine used while this child ran, in cores (of psutil.cpu_count())
    others = max(0.0, (_busy_seconds(psutil.cpu_times()) - busy0 - ours) / wall)
    if res.returncode != 0:
        tail = Path(log).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"child {' '.join(args)} failed (exit {res.returncode}); log {log}:\n{tail}")
    data = json.loads(Path(out).read_text())
    data["child_wall_s"] = round(wall, 1)
    data["other_cpu_cores"] = round(others, 2)
    data["log"] = log
    return data


def _busy_seconds(t) -> float:
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1, default=str))
