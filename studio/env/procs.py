"""Processes the studio records or starts, told apart safely.

- `started(pid)` / `same_process(pid, started)`: a pid alone is not an identity. After a crash or a reboot the kernel
  hands the number to another process (`studio ui`, another run's trainer, anything), so whatever acts on a
  recorded pid (stop, "is it still running?") compares the start time recorded with it (psutil's create_time).
- `die_with_parent`: a `preexec_fn` for helper children (llama-server, the GGUF converter) that must not outlive
  the process that started them, even when that one is SIGKILLed and gets no chance to clean up (Linux
  PR_SET_PDEATHSIG; a no-op elsewhere). The signal is sent when the *thread* that started the child ends, so a
  child is started and waited for in the same thread.
"""
from __future__ import annotations

import signal
import sys

# create_time comes from /proc/<pid>/stat in clock ticks (1/100 s) plus the boot time: the same process reads the
# same value; 0.05 s absorbs float rounding, and a recycled pid started within it is not a practical case.
_SAME_START_S = 0.05


def started(pid: int | None) -> float | None:
    """The process's start time (seconds since the epoch), or None when no such process can be read."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    import psutil
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError, OverflowError):
        return None


def same_start(pid: int | None, started_at: float | None) -> bool:
    """True when `pid` is the process recorded with start time `started_at`, ended (a zombie) or not. A record
    without a start time is never trusted: it cannot be told from a recycled pid."""
    if not isinstance(started_at, (int, float)) or isinstance(started_at, bool):
        return False
    now = started(pid)
    return now is not None and abs(now - float(started_at)) <= _SAME_START_S


def same_process(pid: int | None, started_at: float | None) -> bool:
    """True when `pid` is still the process that was recorded with start time `started_at` and has not ended
    (same_start, and not a zombie)."""
    if not same_start(pid, started_at):
        return False
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """`subprocess.Popen(..., preexec_fn=die_with_parent)`: the child gets `sig` when its parent ends (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass
