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
