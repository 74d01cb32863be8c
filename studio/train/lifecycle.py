"""One run from start to its final status: `studio train CONFIG.yaml --output RUN_DIR [--resume]`, in its own
process, no gradio. It holds the machine's trainer lock, answers SIGTERM/SIGINT and the STOP file with a checkpoint,
resumes from the last intact checkpoint, trains the recipe's trainer (studio.train.recipe), saves the adapter and
writes the summary. Everything it has to say goes into the run folder (studio.runs.events); it never asks whether a
UI is watching. Every failure ends as a readable status (studio.train.failure), the traceback in train.log.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ..config import RunConfig
from ..env import ranks
from ..runs import events
from ..runs.group import GROUP_LOCK_ENV
from ..runs.layout import (ADAPTER, CONFIG, LOG, STOP_FILE, STUDIO_CONFIG, checkpoint_processes, checkpoint_step,
                           checkpoints, is_intact, latest_checkpoint)
from ..runs.lock import RunError, trainer_lock
from .callback import TokenCounter, make_callback
from .failure import explain, remove_incomplete_checkpoints
from .recipe import build_trainer

log = logging.getLogger("studio.train")


class StopRequest:
    """Set by SIGTERM/SIGINT or by a STOP file in the run folder; checked once per optimiser step."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.flag = False

    def __call__(self) -> bool:
        return self.flag or (self.run_dir / STOP_FILE).exists()

    def install(self) -> dict:
        """Install the handlers; returns the previous ones for `restore` (tests run the trainer in-process)."""
        def handler(signum, frame):
            log.info("Received %s: saving a checkpoint and the adapter, then stopping.", signal.Signals(signum).name)
            self.flag = True
        return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def setup_logging(run_dir: Path) -> None:
    """train.log (rank 0 of a multi-process run writes it; rank k writes train.rank<k>.log) and the console."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    rank = ranks.rank()
    fh = logging.FileHandler(run_dir / (LOG if rank == 0 else f"{Path(LOG).stem}.rank{rank}.log"), encoding="utf-8")
    fh.setFormatter(fmt)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    root = logging.getLogger("studio")
    root.handlers[:] = [fh, sh]
    root.setLevel(logging.INFO)
    root.propagate = False
    # transformers/TRL warnings are useful in the log too; keep their chatter at WARNING
    for name in ("transformers", "trl", "peft"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [fh, sh]
        lg.setLevel(logging.WARNING)
        lg.propagate = False


def lora_digest(model) -> str:
    """sha256 of the trainable (LoRA) weights, in parameter order: equal on every rank of a DDP run."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_adapter(trainer, tokenizer, cfg: RunConfig, run_dir: Path) -> Path:
    """The final adapter into RUN/adapter, with the tokenizer and the run's config. Called by every rank: under FSDP
    the adapter's shards are gathered by a collective every rank joins (peft's FSDP-QLoRA example: FULL_STATE_DICT,
    then trainer.save_model() on each rank; rank 0 alone under SHARDED_STATE_DICT waited on the others for good),
    and rank 0 writes; otherwise rank 0 (or the only process) saves and the others return at once."""
    out = run_dir / ADAPTER
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(out))  # every rank; the Trainer writes on rank 0 only
    elif ranks.is_main():
        # only the trained adapter: a dpo run also holds TRL's frozen "ref" copy, which peft would save beside it
        trainer.model.save_pretrained(out, safe_serialization=True, selected_adapters=["default"])
    if ranks.is_main():
        tokenizer.save_pretrained(out)  # with the chat template models.load_tokenizer made sure it has
        cfg.save(out / STUDIO_CONFIG)
    return out


def run(cfg: RunConfig, run_dir: Path, resume: bool = False) -> int:
    """Train one run into run_dir, holding the machine's trainer lock throughout. Returns the process exit code
    (2: another trainer holds the lock, and run_dir was not touched); status.json tells the outcome."""
    # one process of a group takes the machine's lock: the `studio train` parent (launch_group) when there is
    # one, else the first rank on this machine (a group started by `accelerate launch` directly)
    skip = ranks.in_group() and (os.environ.get(GROUP_LOCK_ENV) or ranks.local_rank() > 0)
    try:
        with contextlib.nullcontext() if skip else trainer_lock(run_dir):
            return _run(cfg, run_dir, resume)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(cfg: RunConfig, run_dir: Path, resume: bool) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    stop = StopRequest(run_dir)
    previous_handlers = stop.install()
    main = ranks.is_main()  # rank 0 (or the only process) keeps the run folder
    if main:
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # a stale request must not end the new attempt
    if main and not (run_dir / CONFIG).exists():
        cfg.save(run_dir / CONFIG)
    before = events.read_status(run_dir).get("processes") or 1  # of the last attempt; the checkpoint says better
    events.write_status(run_dir, "running", pid=os.getpid(), error=None, message="Loading model and data",
                        started=time.time(), processes=ranks.world_size())
    log.info("Run %s in %s (pid %d)%s.", cfg.name, run_dir, os.getpid(), " resuming" if resume else "")
    try:
        return _train(cfg, run_dir, resume, stop, before)
    except Exception as e:  # every failure ends as a readable status, the traceback goes to train.log
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            remove_incomplete_checkpoints(run_dir)  # half-written: useless, and they hold the space back
        msg = explain(e, run_dir)
        log.error(msg)
        try:
            _log_file_only(run_dir, traceback.format_exc())  # for a bug report; the console stays readable
            events.write_status(run_dir, "failed", error=msg, message=msg)
        except OSError:  # a full disk or a removed folder: the console has the message; readers see a dead pid
            print(f"error: {msg}", file=sys.stderr)
        return 1
    finally:
        if main:
            (run_dir / STOP_FILE).unlink(missing_ok=True)
        for sig, h in previous_handlers.items():
            signal.signal(sig, h)


def _train(cfg: RunConfig, run_dir: Path, resume: bool, stop, before: int) -> int:
    from .. import stages

    counter = TokenCounter()
    t = cfg.train
    callback = make_callback(run_dir, stop, counter, overfit_evals=t.overfit_evals,
                             patience=t.early_stopping_patience, min_delta=t.early_stopping_min_delta,
                             logged=stages.get(t.stage).logged_for([c["name"] for c in cfg.checks]))
    trainer, tokenizer, _ = build_trainer(cfg, run_dir, [callback], counter)
    if ranks.any_rank(stop()):
        events.write_status(run_dir, "stopped", message="Stopped before training began.")
        return 0
    ckpt = _resume_point(run_dir, before, t) if resume else None
    events.write_status(run_dir, "running", message="Training")
    t0 = time.time()
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    steps = trainer.state.global_step
    stopped = ranks.any_rank(stop())
    losses = events.loss_series(run_dir)
    unmeasured = trainer.eval_dataset is not None and (not losses.eval or losses.eval[-1][0] != steps)
    if ranks.from_main([unmeasured and not stopped])[0]:  # rank 0 read the losses; all evaluate
        trainer.evaluate()
        losses = events.loss_series(run_dir)
    tokens, trained = ranks.sum_ranks(counter.input_tokens, counter.trained_tokens)
    if ranks.in_group():
        log.info("Rank %d LoRA weights sha256 %s.", ranks.rank(), lora_digest(trainer.model))
    main = ranks.is_main()
    out = save_adapter(trainer, tokenizer, cfg, run_dir)
    dt = time.time() - t0
    log.info("%s %d steps in %.0f s; %d tokens (%d trained), %.1f tokens/s%s; %s.",
             f"Saved the adapter to {out}." if main else "Rank 0 saves the adapter.", steps, dt, tokens,
             trained, tokens / max(dt, 1e-9), f" over {ranks.world_size()} processes" if ranks.in_group() else "",
             losses_text(losses, steps, trainer.eval_dataset is not None))
    peak, reserved = _peak_memory_gb(), _peak_reserved_gb()
    if reserved is not None:
        log.info("Peak GPU memory: %.2f GB allocated, %.2f GB reserved by torch's caching allocator (what "
                 "nvidia-smi shows, less the CUDA context).", peak, reserved)
    events.append_metrics(run_dir, {"kind": "summary", "step": steps, "wall_s": round(dt, 1),
                                    "tokens_per_s": round(tokens / max(dt, 1e-9), 2),
                                    "processes": ranks.world_size(), "peak_memory_gb": peak,
                                    "peak_reserved_gb": reserved, "time": time.time()})
    final = "stopped" if stopped else "finished"
    if main and cfg.checks and cfg.train.checks_eval_rows > 0 and not stopped:
        _evaluate_on_checks(trainer, cfg, run_dir)
    message = f"{final.capitalize()} at step {steps}; adapter saved."
    if callback.early_stop and final == "finished":
        es = callback.early_stop
        message = (f"Stopped early at step {steps}: the eval loss had not improved for {es['patience']} "
                   f"evaluations; it was lowest at step {es['best_step']} ({es['best_eval_loss']:.4f}), "
                   f"whose checkpoint is kept. Adapter saved.")
    events.write_status(run_dir, final, step=steps, message=message, peak_memory_gb=peak)
    return 0


def _evaluate_on_checks(trainer, cfg: RunConfig, run_dir: Path) -> None:
    """Base vs tuned on the run's checks (studio.evals), once the adapter is saved: the trainer's model is let go
    first, since the evaluation loads the base again (on a GPU both would not fit)."""
    import gc

    import torch

    on_cpu = bool(trainer.args.use_cpu)
    events.write_status(run_dir, "running", message="Evaluating base vs tuned on the checks")
    trainer.accelerator.free_memory()
    trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        from ..evals.evaluate import evaluate_after_training
        evaluate_after_training(run_dir, cfg, device_is_cpu=on_cpu)
    except Exception as e:  # noqa: BLE001 — training succeeded and its adapter is saved; `studio eval` can redo this
        log.warning("The evaluation on the checks failed (%s: %s); the adapter is saved. Run `studio eval %s` to "
                    "evaluate it.", type(e).__name__, e, run_dir)


def _resume_point(run_dir: Path, before: int, train=None) -> Path | None:
    """The newest intact checkpoint to resume from (None: start at step 0), saying which damaged ones are skipped,
    and marking the resume in metrics.jsonl. `before`: the last attempt's process count, used only when the
    checkpoint does not say how many processes wrote it; `train`: the run's TrainSettings, for the rows per step."""
    ckpt = latest_checkpoint(run_dir)
    damaged = [p.name for p in checkpoints(run_dir, intact=False) if not is_intact(p)
               and (ckpt is None or checkpoint_step(p) > checkpoint_step(ckpt))]
    if damaged:
        log.warning("Skipping %s: damaged (a file is cut short or unreadable, e.g. after a full disk); %s.",
                    ", ".join(damaged), f"resuming from {ckpt.name}" if ckpt else "no intact checkpoint")
    if ckpt is None:
        log.info("No checkpoint to resume from: starting at step 0.")
        return None
    n, step = ranks.world_size(), checkpoint_step(ckpt)
    events.append_metrics(run_dir, {"kind": "resume", "step": step, "processes": n, "time": time.time()})
    log.info("Resuming from %s (step %d).", ckpt.name, step)
    # the checkpoint itself says who wrote it: status.json's count is the last attempt's, which may have failed
    # before writing any checkpoint (a 1-process retry of a 2-process run)
    written = checkpoint_processes(ckpt) or before
    if n != written:
        log.warning(_resume_note(written, n, step, train))
    return ckpt


def _resume_note(written: int, n: int, step: int, train) -> str:
    """What resuming with another process count changes (transformers resumes the model, optimiser and schedule;
    each process's data order restarts): the rows per step and what the remaining steps mean."""
    note = (f"The checkpoint was written by {written} process{'' if written == 1 else 'es'} and resumes with {n}: "
            f"a step now takes {n} x Batch size")
    if train is not None:
        per = train.batch_size * train.grad_accum
        note += (f" x Gradient accumulation = {n * per} rows instead of {written * per}; steps go on from {step}, "
                 + (f"so the {max(train.max_steps - step, 0)} left to {train.max_steps} see "
                    f"{n / written:g} x the rows each" if train.max_steps > 0 else
                    f"and the steps of the remaining epochs are counted again for {n} process{'' if n == 1 else 'es'}"))
    else:
        note += " rows"
    return note + (f". The rows after the checkpoint come in a new order. Resume with --devices {written} to keep the "
                   f"run as it was.")


def _peak_memory_gb() -> float | None:
    """Peak memory of this trainer: allocated GPU memory on CUDA, else the process's peak resident size."""
    import torch
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    try:
        import resource
    except ImportError:  # Windows
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(kb / (2**30 if sys.platform == "darwin" else 2**20), 2)


def _peak_reserved_gb() -> float | None:
    """On CUDA the caching allocator's peak reserve (allocated + cached free blocks, fragmentation included): the
    figure an out-of-memory is decided against. None on the CPU."""
    import torch
    if torch.cuda.is_available() and torch.cuda.max_memory_reserved() > 0:
        return round(torch.cuda.max_memory_reserved() / 2**30, 2)
    return None


def losses_text(losses: events.Losses, step: int, held_out: bool) -> str:
    """The end of the run's last log line: "final train loss 1.2345, eval loss 1.4000"; an eval from an earlier step
    says its step (a Stop skips the final eval), and a missing one says why instead of "eval loss -"."""
    train = "no train loss logged yet" if losses.last_train is None else f"final train loss {losses.last_train:.4f}"
    if not held_out:
        return f"{train}; no held-out rows, so no eval loss"
    if not losses.eval:
        return f"{train}; no eval yet"
    at, loss = losses.eval[-1]
    return f"{train}, eval loss {loss:.4f}" + ("" if at == step else f" (at step {at})")


def _log_file_only(run_dir: Path, text: str) -> None:
    with open(run_dir / LOG, "a", encoding="utf-8") as f:
        f.write(text + "\n")


