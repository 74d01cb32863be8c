"""Several processes for one run: the launcher (accelerate on GPUs, torchrun on CPU) and its accelerate config.

`studio train CONFIG --devices N` is still the unit: with N > 1 and outside a process group it becomes the
group's parent (`launch_group`): it holds the machine's trainer lock, writes the accelerate config into the run
folder, starts the launcher with the same `studio train` arguments, turns SIGTERM/SIGINT into the run's STOP file
(every rank polls it; they agree through studio.env.ranks.any_rank), and waits. Inside the group (WORLD_SIZE set by
the launcher) each rank trains; only rank 0 writes events.jsonl, status.json, train.log and the adapter.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from ..config import RunConfig
from ..env.devices import gpu_count, gpus_present, logical_cpus
from ..env.io import write_text
from . import events
from .layout import CONFIG, STOP_FILE
from .lock import RunError, trainer_lock

ACCELERATE_CONFIG = "accelerate.yaml"
GROUP_LOCK_ENV = "STUDIO_GROUP_HOLDS_LOCK"  # set by launch_group: its ranks must not take the trainer lock again
# the launcher's console (its ranks' too), appended per attempt and copied to this process's stderr as it grows: a
# file, not a pipe, so the ranks never write into a closed pipe if this process is killed; read back for which
# rank failed and why
LAUNCHER_LOG = "launcher.log"


# --- deciding and launching -----------------------------------------------------------------------

def explain_launch(cfg: RunConfig, config_name: str, out: str) -> str:
    """What `studio train` does with train.devices above 1 on this machine, and the same by hand (a cluster)."""
    gpus = gpus_present()
    n = cfg.train.devices or max(gpus, 1)
    conf = accelerate_config(cfg, n, gpus > 0)
    import yaml
    launcher = " ".join(launcher_command(n, gpus > 0, Path(out) / ACCELERATE_CONFIG,
                                         ["train", config_name, "--output", out]))
    lines = [f"# {n} processes ({cfg.train.distributed.upper()}): studio train writes this accelerate config to "
             f"{out}/{ACCELERATE_CONFIG}",
             f"# and runs: {launcher}",
             "# On a cluster: copy it to each node, set machine_rank (0..num_machines-1), num_machines,",
             "# num_processes (all GPUs of all nodes) and main_process_ip, then on every node:",
             f"#   accelerate launch --config_file {ACCELERATE_CONFIG} -m studio train {config_name} --output {out}"]
    return "\n".join(lines + ["# " + line for line in yaml.safe_dump(conf, sort_keys=False).splitlines()])


def resolve_devices(cfg: RunConfig, gpus: int | None = None) -> int:
    """How many processes the run gets on this machine: train.devices (0 = every GPU present), checked against
    what the machine has before anything starts. On a machine without GPUs, N > 1 means N CPU processes (gloo):
    it proves the multi-process path, it does not make CPU training faster."""
    n = cfg.train.devices
    gpus = gpu_count() if gpus is None else gpus
    if gpus:
        if n == 0:
            return gpus
        if n > gpus:
            raise ValueError(f"train.devices is {n} but this machine has {gpus} GPU{'s' if gpus > 1 else ''}: set "
                             f"GPUs to {gpus} or fewer (0 uses all of them).")
        return n
    cores = logical_cpus()
    if n == 0:
        return 1
    if n > cores:
        raise ValueError(f"train.devices is {n} but this machine has no GPU and {cores} CPU cores: on CPU, more "
                         f"processes than cores only slow each other down. Set GPUs to 1 (or at most {cores}).")
    if cfg.train.distributed == "fsdp" and n > 1:
        raise ValueError("FSDP needs GPUs (it shards 4-bit weights across them); on this machine without GPUs "
                         "use distributed: ddp, or a single process.")
    return n


def accelerate_config(cfg: RunConfig, n: int, gpus: bool) -> dict:
    """The accelerate config the group is launched with (saved as RUN/accelerate.yaml: edit machine_rank,
    num_machines, main_process_ip for a cluster). FSDP + QLoRA follows the bitsandbytes/peft recipe: the model's
    decoder layer as the wrap unit (no class named here: accelerate takes the model's own `_no_split_modules`,
    LlamaDecoderLayer, GPT2Block, ..., and the trainer puts peft's policy on top), use_orig_params off (peft),
    CPU-RAM-efficient loading, and the 4-bit weights stored in the compute dtype (models.load_model sets
    bnb_4bit_quant_storage) so they shard."""
    fsdp = cfg.train.distributed == "fsdp"
    conf = {"compute_environment": "LOCAL_MACHINE", "debug": False, "distributed_type":
            ("FSDP" if fsdp else "MULTI_GPU") if gpus else "MULTI_CPU", "downcast_bf16": "no",
            "machine_rank": 0, "main_training_function": "main", "num_machines": 1, "num_processes": n,
            "rdzv_backend": "static", "same_network": True, "use_cpu": not gpus,
            "mixed_precision": "no", "main_process_ip": "127.0.0.1", "main_process_port": 29500}
    if fsdp:
        conf["fsdp_config"] = {
            "fsdp_version": 1, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_cpu_ram_efficient_loading": True, "fsdp_forward_prefetch": False,
            "fsdp_offload_params": False, "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_sync_module_states": True,
            "fsdp_use_orig_params": False}
    return conf


def launcher_command(n: int, gpus: bool, config_file: Path, train_args: list[str]) -> list[str]:
    """The one place the launcher is chosen. GPUs: `accelerate launch --config_file RUN/accelerate.yaml
    --num_processes N -m studio train ...`. CPU: torchrun (`python -m torch.distributed.run --standalone
    --nproc_per_node N`), what accelerate runs underneath, since `accelerate launch --cpu --num_processes N`
    starts one process without an MPI host file."""
    if gpus:
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                "--num_processes", str(n), "-m", "studio", *train_args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
            "-m", "studio", *train_args]


def launch_group(cfg: RunConfig, run_dir: Path, n: int, train_args: list[str]) -> int:
    """Run the group for one run and wait: the parent `studio train` process. Returns the exit code."""
    import yaml

    gpus = gpu_count() > 0
    run_dir = Path(run_dir)
    try:
        with trainer_lock(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
            if not (run_dir / CONFIG).exists():
                cfg.save(run_dir / CONFIG)
            conf_path = write_text(run_dir / ACCELERATE_CONFIG,
                                   yaml.safe_dump(accelerate_config(cfg, n, gpus), sort_keys=False))
            cmd = launcher_command(n, gpus, conf_path, train_args)
            (run_dir / STOP_FILE).unlink(missing_ok=True)
            events.write_status(run_dir, "queued", pid=os.getpid(), error=None,
                                message=f"Starting {n} processes ({'accelerate' if gpus else 'torchrun, CPU'})")
            print(f"Launching {n} processes: {' '.join(cmd)}", file=sys.stderr, flush=True)
            env = {**os.environ, GROUP_LOCK_ENV: "1", "PYTHONUNBUFFERED": "1"}
            with open(run_dir / LAUNCHER_LOG, "ab") as console:
                proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                        start_new_session=True)
            return _wait(proc, run_dir)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _wait(proc: subprocess.Popen, run_dir: Path) -> int:
    """Wait for the launcher, copying its console (RUN/launcher.log) to stderr as it grows; a first SIGTERM/SIGINT
    becomes the STOP file (every rank finishes its step, saves a checkpoint and stops at the same step), a second
    one is passed on to the launcher, which ends its ranks. A rank ended by a signal is named in the status."""
    asked = {"n": 0}

    def handler(signum, frame):
        asked["n"] += 1
        if asked["n"] == 1:
            (run_dir / STOP_FILE).touch()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    rank_logs = {p: p.stat().st_size for p in run_dir.glob("train.rank*.log")}  # earlier attempts' ends
    log = run_dir / LAUNCHER_LOG
    log.touch()
    try:
        with open(log, "rb") as console:
            console.seek(0, os.SEEK_END)  # this attempt's output: earlier attempts' is above it
            start = console.tell()
            rc = _follow(proc, console)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    st = events.read_status(run_dir)
    msg = _group_failure(run_dir, st.get("state"), rc, _read_from(log, start), rank_logs)
    if msg:
        events.write_status(run_dir, "failed", error=msg, message=msg)
        print(f"error: {msg}", file=sys.stderr)
        return rc or 1
    return 0 if st.get("state") in ("finished", "stopped") else (rc or 1)


def _group_failure(run_dir: Path, state: str | None, rc: int, launcher_output: str,
                   rank_logs: dict[Path, int]) -> str | None:
    """What the run's status must say when the group did not end well, or None (it finished or stopped, or rank 0
    already said why it failed). A rank killed by a signal or out of memory outranks rank 0's own error, which is
    only the echo of the collective that broke."""
    if state in ("finished", "stopped"):
        return None
    killed = killed_rank(launcher_output)
    if killed:
        return killed_message(*killed, run_dir)
    oom = rank_out_of_memory(run_dir, rank_logs)
    if oom:
        return f"Rank {oom[0]} ran out of memory (see train.rank{oom[0]}.log). {oom[1]}"
    if state in events.ACTIVE_STATES:  # a rank died before rank 0 could say so
        return (f"The training processes ended with exit code {rc} before the run finished: see train.log and "
                f"train.rank*.log in {run_dir}.")
    return None


def _follow(proc: subprocess.Popen, console) -> int:
    """Copy what the launcher appends to its console file to stderr until it exits; its exit code."""
    out = getattr(sys.stderr, "buffer", None)

    def copy() -> None:
        data = console.read()
        if data:
            with contextlib.suppress(OSError, ValueError):  # our own stderr gone: the file still has it
                if out is not None:
                    out.write(data)
                else:  # a text-only stderr (a test's capture)
                    sys.stderr.write(data.decode("utf-8", "replace"))
                sys.stderr.flush()

    while True:
        copy()
        try:
            rc = proc.wait(timeout=0.2)  # 0.2 s: the console follows the ranks closely enough to read live
            break
        except subprocess.TimeoutExpired:
            continue
    copy()
    return rc


def _read_from(path: Path, start: int, limit: int = 1 << 16) -> str:
    """The last `limit` bytes (64 KiB: the failure summary is ~1 KiB at the end) written to `path` after `start`."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(start, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# torchrun's failure summary (torch.distributed.elastic ChildFailedError: "Failures:" blocks, then the "Root Cause"
# one) and its agent's log line; accelerate launch runs the same code, so it prints the same
_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")
_AGENT = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")


def killed_rank(launcher_output: str) -> tuple[int, int] | None:
    """(rank, signal number) of the rank a signal ended, read from the launcher's output; None when no rank was.
    A SIGTERM counts only when no rank exited with an error: torchrun sends SIGTERM to the survivors itself."""
    found = [(int(r), int(code)) for r, code in _FAILURE.findall(launcher_output)]
    if not found:
        found = [(int(r), int(code)) for code, r in _AGENT.findall(launcher_output)]
    root = found[-1:]  # the summary names its root cause (first observed failure) last
    signalled = [(r, -c) for r, c in root + found if c < 0]
    hard = [x for x in signalled if x[1] != signal.SIGTERM]
    if hard:
        return hard[0]
    if signalled and not any(c > 0 for _, c in found):
        return signalled[0]
    return None


def rank_out_of_memory(run_dir: Path, before: dict[Path, int]) -> tuple[int, str] | None:
    """(rank, its advice) when a rank other than 0 ran out of memory in this attempt: its log (train.rank<k>.log,
    read past `before`, the sizes the logs had when the attempt began) holds the trainer's "Out of memory. ..."
    sentence, which reads the run's settings (studio.train.failure.oom_advice)."""
    for path in sorted(run_dir.glob("train.rank*.log")):
        text = _read_from(path, before.get(path, 0))
        at = text.rfind("Out of memory.")
        if at >= 0:
            rank = re.search(r"rank(\d+)", path.name)
            return int(rank.group(1)) if rank else 1, text[at:].splitlines()[0].strip()
    return None


def killed_message(rank: int, sig: int, run_dir: Path) -> str:
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = "an unknown signal"
    why = "; `kill -9` or the system's out-of-memory killer (see `dmesg`) does this" if sig == signal.SIGKILL else ""
    log = "train.log" if rank == 0 else f"train.rank{rank}.log"
    return (f"Rank {rank} was killed by signal {sig} ({name}){why}. The other processes stopped with it. "
            f"Resume continues from the last checkpoint; see {log} and {LAUNCHER_LOG} in {run_dir}.")
