"""What the machine computes on: GPUs and physical CPU cores, the one detector of each.

torch is imported only where a caller asks for a device torch will use (`pick_device`, `gpu_count`); the
counts the UI shows before any model loads come from the driver's /proc files, narrowed by
CUDA_VISIBLE_DEVICES, or from torch when it is loaded already.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_NVIDIA = Path("/proc/driver/nvidia/gpus")


def gpu_count() -> int:
    """GPUs torch can use (imports torch)."""
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpus_present() -> int:
    """GPUs on this machine without importing torch (the UI builds its form before torch is loaded): torch's
    count when it is loaded, else the NVIDIA driver's list, narrowed by CUDA_VISIBLE_DEVICES."""
    if "torch" in sys.modules:
        try:
            return gpu_count()
        except Exception:  # a broken CUDA install answers like no GPU: the CPU path still works
            return 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    n = len(list(_NVIDIA.iterdir())) if _NVIDIA.is_dir() else 0
    if visible is not None:
        n = min(n, len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"]))
    return n


def default_device() -> str:
    """"cuda" or "cpu", as a run would be placed, without importing torch (gpus_present)."""
    return "cuda" if gpus_present() > 0 else "cpu"


def pick_device() -> str:
    """The device a model is loaded on here: "cuda" when torch sees a GPU, else "cpu" (imports torch)."""
    return "cuda" if gpu_count() > 0 else "cpu"


def physical_cores() -> int:
    """Physical CPU cores (torch's default thread count); the logical count where psutil cannot tell."""
    import psutil
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def logical_cpus() -> int:
    return os.cpu_count() or 1


# --- CUDA capability: the one place bf16 vs fp16 is decided ----------------------------------------------

def cuda_capability(index: int = 0) -> tuple[int, int] | None:
    """(major, minor) compute capability of GPU `index`, or None when torch sees no GPU (imports torch). Tests
    inject a GPU's capability by replacing this function."""
    import torch
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(index))


def native_bf16(capability: tuple[int, int] | None) -> bool:
    """Whether a GPU computes bf16 on its tensor cores: compute capability 8.0 (Ampere) and later. Not
    torch.cuda.is_bf16_supported(), which says True on a T4 (7.5) or V100 (7.0) because it counts emulation: bf16
    there runs without tensor cores, and SDPA has no memory-efficient kernel for it below 8.0."""
    return capability is not None and capability[0] >= 8


def cuda_dtype_name(capability: tuple[int, int] | None = None) -> str:
    """The compute dtype "auto" means on a GPU: bfloat16 at capability >= 8.0, else float16 (trained with the
    GradScaler that TrainingArguments' fp16 flag provides). `capability`: cuda_capability()'s when not given."""
    return "bfloat16" if native_bf16(capability if capability is not None else cuda_capability()) else "float16"


def gpu_memory(index: int = 0) -> tuple[int, int, int] | None:
    """(free, total, held by this process) bytes of GPU `index` as the driver sees them now
    (torch.cuda.mem_get_info; "held" is torch's reserve in this process, e.g. the Chat tab's model), or None
    without a GPU. Tests inject a card by replacing this function."""
    import torch
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info(index)
    return int(free), int(total), int(torch.cuda.memory_reserved(index))
