"""The trainer: `studio train CONFIG.yaml --output RUN_DIR [--resume]`, in its own process, no gradio.

The recipe: config -> data -> model -> TRL trainer -> train -> save. QLoRA by default on every device (the
base in 4-bit NF4 through bitsandbytes, peft LoRA on top, TRL's SFTTrainer, loss on assistant tokens only);
the speed levers are studio.speed's. Everything it has to say goes into the run folder (studio.metrics);
it never asks whether a UI is watching.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from . import distributed, metrics, speed
from .config import RunConfig
from .runs import (ADAPTER, CHECKPOINTS, CONFIG, DATASET, EVAL_SET, LOG, PAIRS, STOP_FILE, STUDIO_CONFIG, UNPAIRED,
                   checkpoint_step, checkpoints, is_intact, latest_checkpoint)

log = logging.getLogger("studio.train")


@dataclass
class TokenCounter:
    input_tokens: int = 0
    trained_tokens: int = 0


class _Stop:
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
    rank = distributed.rank()
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


def set_threads(n: int) -> int:
    import torch
    if distributed.in_group():
        n = distributed.threads_per_rank(n)
    elif n <= 0:
        import psutil
        n = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def prepare_data(cfg: RunConfig, run_dir: Path, tokenizer):
    """Read + validate the data, split it, tokenize with the chat template. Returns (train_ds, eval_ds, report)."""
    from datasets import Dataset

    from . import data

    report = data.from_config(cfg.data)
    _log_report("Data", report)
    train_ex, eval_ex = data.split(report.examples, cfg.train.eval_fraction, cfg.train.seed)
    if not (run_dir / DATASET).exists():
        data.write_jsonl(report.examples, run_dir / DATASET)
    data.write_jsonl(eval_ex, run_dir / EVAL_SET)
    unmarked: list = []

    def tok(examples):
        rows = [data.tokenize_messages(m, tokenizer, cfg.train.max_length, issues=unmarked) for m in examples]
        rows = [r for r in rows if any(r["assistant_masks"])]  # cut to nothing trainable: no signal
        return Dataset.from_list(rows) if rows else None

    train_ds, eval_ds = tok(train_ex), tok(eval_ex)
    for issue in unmarked[:5]:
        log.warning("An example's answer is not trained on: %s (%s)", issue.problem, issue.fix)
    if train_ds is None:
        raise data.DataError(f"{cfg.data.path}: no example has an assistant answer inside the first "
                             f"{cfg.train.max_length} tokens. Raise Max sequence length.")
    log.info("Split: %d training examples, %d held out (seed %d).", len(train_ds),
             len(eval_ds) if eval_ds is not None else 0, cfg.train.seed)
    return train_ds, eval_ds, report


def _batching(t) -> dict:
    """SFTConfig batching. 'Packing' = padding-free batches of `batch_size` rows, not TRL's bins.

    Each batch's rows are concatenated into one sequence (attention kept per row by speed.packed_attention),
    so no compute goes to padding, and a step still takes `batch_size` rows: the same steps per epoch and
    rows per optimiser step as an unpacked run, so learning rate and batch size mean what they say.
    TRL's 512-token bins put ~28 sample rows in each of the 4 rows of a batch: 7x the tokens per step,
    7x fewer updates per epoch and 7x the activation memory (3.8x the peak RSS, bench/RESULTS.md).
    """
    if t.packing:
        # rows are already cut at max_length by prepare_data; TRL refuses max_length with padding_free alone
        return dict(packing=False, padding_free=True, max_length=None, train_sampling_strategy="random")
    # similar lengths in a batch means little padding when packing is off
    return dict(packing=False, padding_free=False, max_length=t.max_length,
                train_sampling_strategy="group_by_length")


def build_trainer(cfg: RunConfig, run_dir: Path, callbacks=(), counter: TokenCounter | None = None):
    """Model + LoRA + SFTTrainer exactly as a studio run uses them (the benchmark reuses this)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from trl import SFTConfig, SFTTrainer

    from .models import cpu_precision, load_model, load_tokenizer, pick_device, pick_dtype, resolve_source

    counter = counter or TokenCounter()
    device = pick_device()
    fsdp = distributed.in_group() and cfg.train.distributed == "fsdp"
    if device == "cuda" and distributed.in_group():
        torch.cuda.set_device(distributed.local_rank())
        device = f"cuda:{distributed.local_rank()}"  # each rank its own GPU
    threads = set_threads(cfg.train.threads) if device == "cpu" else None  # before the probe: it measures on them
    path = resolve_source(cfg.model.source)
    dtype = pick_dtype(cfg.model, "cuda" if device.startswith("cuda") else device, path)
    if device == "cpu" and cfg.model.compute_dtype == "auto":
        log.info("%s.", cpu_precision(path).line())
    log.info("Model %s from %s on %s, compute dtype %s%s.", cfg.model.source, path, device,
             str(dtype).replace("torch.", ""), f", {threads} threads" if threads else "")
    tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    stage = cfg.train.stage
    dpo = stage in ("dpo", "kto")  # a preference stage: a frozen reference, no packing, no SFT speed levers
    prepare = {"dpo": prepare_preferences, "kto": prepare_feedback}.get(stage, prepare_data)
    train_ds, eval_ds, report = prepare(cfg, run_dir, tokenizer)

    quant = cfg.model.quantization == "nf4"
    model = load_model(path, cfg.model, device, fsdp=fsdp)
    log.info("Base loaded %s: %.0f MB of weights.", "in 4-bit NF4" + (" + double quant" if cfg.model.double_quant
             else "") if quant else "unquantised", model.get_memory_footprint() / 2**20)
    if quant:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    targets = cfg.lora.target_modules
    start = start_adapter(cfg.train.start_from) if cfg.train.start_from.strip() else None
    if start is not None:
        from peft import PeftModel
        # the adapter keeps its own LoRA shape (r, alpha, targets); this run's LoRA fields do not apply
        model = PeftModel.from_pretrained(model, str(start), is_trainable=True)
        lc = model.peft_config["default"]
        log.info("Continuing the adapter in %s (r=%d, alpha=%d)%s.", start, lc.r, lc.lora_alpha,
                 "; it is also the frozen reference of the preference loss" if dpo else "")
    else:
        from transformers import set_seed
        # the new adapter's random init (LoRA A) from the run's seed: the same config trains the same adapter. The
        # Trainer seeds only when it is built, after this; unseeded, each process drew another A (runs differed
        # from step 3 on, up to 2% in loss on the tiny model)
        set_seed(cfg.train.seed)
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
            target_modules="all-linear" if targets == ["all-linear"] else targets))
    packed = cfg.train.packing and not dpo  # DPO/KTO trainers pad their own batches (chosen + rejected, or + KL)
    attn = speed.packed_attention(model) if packed else model.config._attn_implementation
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lc = model.peft_config["default"]
    names = lc.target_modules if isinstance(lc.target_modules, str) else \
        ",".join(sorted({m.split(".")[-1] for m in lc.target_modules}))  # a loaded adapter lists full paths
    log.info("LoRA r=%d alpha=%d on %s: %.2f M trainable parameters; attention %s.", lc.r, lc.lora_alpha, names,
             n_train / 1e6, attn)

    t = cfg.train
    on_cuda = device.startswith("cuda")
    group = distributed.in_group()
    if group:
        log.info("Rank %d of %d (%s, %s).", distributed.rank(), distributed.world_size(),
                 "FSDP" if fsdp else "DDP", device)
    common = dict(
        output_dir=str(run_dir / CHECKPOINTS),
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio
        num_train_epochs=t.epochs, max_steps=t.max_steps if t.max_steps > 0 else -1,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        optim=optimizer(t.optimizer, on_cuda), weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        seed=t.seed, data_seed=t.seed, logging_steps=t.logging_steps, logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must reach the callback, which fails the run with advice
        eval_strategy="no" if eval_ds is None else ("steps" if t.eval_steps > 0 else "epoch"),
        eval_steps=t.eval_steps if t.eval_steps > 0 else None, prediction_loss_only=True,
        save_strategy="steps", save_steps=t.save_steps,
        # transformers' rotation keeps its best_model_checkpoint (lowest eval loss) besides the newest ones
        save_total_limit=t.save_total_limit or None,
        metric_for_best_model="eval_loss" if eval_ds is not None else None, greater_is_better=False,
        # bf16 = autocast on GPU and CPU alike: the LoRA weights, their gradients and the optimiser states stay fp32
        # (pure-bf16 adapters ended the demo run at loss 0.331 where fp32 ended at 0.269)
        bf16=dtype == torch.bfloat16, fp16=on_cuda and dtype == torch.float16,
        use_cpu=not on_cuda, report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        # several processes: gloo on CPU; LoRA leaves no parameter unused, so DDP need not search for them
        ddp_backend=("nccl" if on_cuda else "gloo") if group else None,
        ddp_find_unused_parameters=False if group else None,
        dataset_num_proc=None,
    )
    # the adapter as it is now, in fp32: TRL casts QLoRA adapters to bf16 (the paper's GPU recipe); here they stay
    # fp32 under any compute dtype (mixed precision), and a started-from adapter comes back exactly, not bf16-rounded.
    # Not under FSDP: it flattens one dtype per wrapped unit, and the bitsandbytes FSDP-QLoRA recipe keeps bf16
    exact = None if fsdp else {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    if dpo:
        trainer = _preference_trainer(stage, model, tokenizer, common, t, train_ds, eval_ds, callbacks, counter)
        _fp32_adapters(trainer, exact)
        return trainer, tokenizer, report
    kind = "cuda" if on_cuda else device
    levers = speed.resolve(t.levers, kind)
    args = SFTConfig(**common, **_batching(t), remove_unused_columns=True,
                     use_liger_kernel=speed.use_liger(levers, kind))

    class StudioSFTTrainer(SFTTrainer):
        studio_labelled_head = False  # set by speed.apply when the lmhead lever is on

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and group and counter.input_tokens == 0:
                # each rank's first batch, so a test (or a user) can see the ranks were given different rows
                log.info("Rank %d first batch: %s", distributed.rank(), json.dumps(_row_digests(inputs)))
            if model.training:
                if "attention_mask" in inputs:
                    counter.input_tokens += int(inputs["attention_mask"].sum())
                else:  # padding-free: every position is a real token
                    counter.input_tokens += int(inputs["input_ids"].numel())
                counter.trained_tokens += int((inputs["labels"] != -100).sum())
            if self.studio_labelled_head and not return_outputs:
                return speed.labelled_loss(self, model, inputs, num_items_in_batch)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = StudioSFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               processing_class=tokenizer, callbacks=list(callbacks))
    if fsdp and getattr(trainer, "is_fsdp_enabled", False):
        from peft.utils.other import fsdp_auto_wrap_policy
        # peft's policy wraps the LoRA layers apart from the frozen 4-bit ones (the bitsandbytes FSDP-QLoRA recipe)
        trainer.accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(trainer.model)
    applied = speed.apply(trainer, kind, levers)
    log.info("Speed levers: %s.", ", ".join(applied) or "none")
    _fp32_adapters(trainer, exact)
    return trainer, tokenizer, report


def optimizer(name: str, on_cuda: bool) -> str:
    """train.optimizer as transformers names it: auto = fused AdamW on CUDA, adamw_torch (foreach) on the CPU,
    where fused measured 1.01x (bench/RESULTS.md)."""
    if name != "auto":
        return name
    return "adamw_torch_fused" if on_cuda else "adamw_torch"


def start_adapter(start_from: str) -> Path:
    """The adapter folder `train.start_from` names: a run folder (its final adapter), RUN/checkpoint-N, one of the
    run's checkpoint folders, or an adapter folder. ValueError says what is missing."""
    from .runs import resolve_adapter
    p = Path(start_from).expanduser()
    if p.name.startswith("checkpoint-") and not (p / "adapter_config.json").is_file() and (p.parent / CONFIG).is_file():
        return resolve_adapter(p.parent, p.name)[0]  # RUN/checkpoint-N, as the field's help writes it
    try:
        return resolve_adapter(p)[0]
    except ValueError as e:
        raise ValueError(f"Start from: {e}") from None


def _log_report(what: str, report) -> None:
    log.info("%s: %s", what, report.summary())
    for issue in report.issues[:20]:
        log.info("  row %s, column %s: %s (%s)", issue.row, issue.column, issue.problem, issue.fix)


def _split_and_keep(cfg: RunConfig, run_dir: Path, examples: list[dict], own: str, write, conversations):
    """A preference stage's examples split, and kept in the run folder: `own` (written by `write`) holds them, and
    dataset.jsonl / eval.jsonl hold `conversations(examples)`, what Chat's held-out comparison and the GGUF check
    read. Returns (train examples, eval examples, train Dataset, eval Dataset or None)."""
    from datasets import Dataset

    from . import data

    train_ex, eval_ex = data.split(examples, cfg.train.eval_fraction, cfg.train.seed)
    if not (run_dir / own).exists():
        write(examples, run_dir / own)
    if not (run_dir / DATASET).exists():
        data.write_jsonl(conversations(examples), run_dir / DATASET)
    data.write_jsonl(conversations(eval_ex), run_dir / EVAL_SET)
    return train_ex, eval_ex, Dataset.from_list(train_ex), Dataset.from_list(eval_ex) if eval_ex else None


def prepare_preferences(cfg: RunConfig, run_dir: Path, tokenizer=None):
    """Preference pairs for the dpo stage: read + validate, split, and keep what the other tabs read: dataset.jsonl
    and eval_set.jsonl hold prompt + chosen answer as conversations (Chat's held-out comparison measures against
    the chosen answers), pairs.jsonl the pairs. Returns (train_ds, eval_ds, report)."""
    from . import data

    report = data.read_preferences(cfg.data.path, skip_invalid=cfg.data.skip_invalid)
    _log_report("Preference data", report)
    if len(report.examples) < 2:
        raise data.DataError(f"{cfg.data.path}: {len(report.examples)} usable preference pair(s); DPO needs at least "
                             f"2 (a few dozen to learn much). Vote on more answers in the Chat tab, or add pairs.")
    train_ex, eval_ex, train_ds, eval_ds = _split_and_keep(
        cfg, run_dir, report.examples, PAIRS, data.write_pairs, lambda ex: [e["prompt"] + e["chosen"] for e in ex])
    log.info("Split: %d training pairs, %d held out (seed %d).", len(train_ex), len(eval_ex), cfg.train.seed)
    return train_ds, eval_ds, report


def prepare_feedback(cfg: RunConfig, run_dir: Path, tokenizer=None):
    """Rated answers for the kto stage, as prepare_preferences does for pairs: unpaired.jsonl keeps them,
    dataset.jsonl / eval.jsonl the good ones as conversations. Returns (train_ds, eval_ds, report)."""
    from . import data

    report = data.read_feedback(cfg.data.path, skip_invalid=cfg.data.skip_invalid)
    _log_report("Rated answers", report)
    n, good = report.n_used, report.n_desirable
    if n < 2:
        raise data.DataError(f"{cfg.data.path}: {n} usable rated answer(s); KTO needs at least 2 (a few dozen to learn "
                             f"much). Rate more answers with 👍/👎 in the Chat tab.")
    if good in (0, n):
        log.warning("All %d rated answers are %s: KTO learns most from both kinds.", n, "good" if good else "bad")
    train_ex, eval_ex, train_ds, eval_ds = _split_and_keep(
        cfg, run_dir, report.examples, UNPAIRED, data.write_unpaired,
        lambda ex: [e["prompt"] + e["completion"] for e in ex if e["label"]])
    log.info("Split: %d training answers (%d good), %d held out (seed %d).", len(train_ex),
             sum(e["label"] for e in train_ex), len(eval_ex), cfg.train.seed)
    return train_ds, eval_ds, report


def _preference_trainer(stage: str, model, tokenizer, common: dict, t, train_ds, eval_ds, callbacks,
                        counter: TokenCounter):
    """TRL's DPOTrainer (pairs) or KTOTrainer (rated answers) on a PeftModel and no ref_model: each copies the
    "default" adapter into a frozen "ref" adapter (read in trl/trainer/dpo_trainer.py and kto_trainer.py, 1.16), so
    the reference is the adapter we start from and the 4-bit base is in memory once. With a new adapter, the
    reference is the base (adapters disabled)."""
    if stage == "kto":
        from trl import KTOConfig as Config
        from trl import KTOTrainer as Trainer
        args = Config(**common, beta=t.dpo_beta, max_length=t.max_length, remove_unused_columns=False)
    else:
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer
        args = Config(**common, beta=t.dpo_beta, loss_type=t.dpo_loss.split("+"), max_length=t.max_length,
                      remove_unused_columns=False)

    class StudioPreferenceTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                counter.input_tokens += int(inputs["attention_mask"].sum())
                counter.trained_tokens += int(inputs["completion_mask"].sum())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = StudioPreferenceTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                      processing_class=tokenizer, callbacks=list(callbacks))
    log.info("%s: beta %g%s; reference: %s; speed levers: none (measured for SFT only).", stage.upper(), t.dpo_beta,
             f", loss {t.dpo_loss}" if stage == "dpo" else "", "the starting adapter, frozen"
             if "ref" in trainer.model.peft_config else "the base model (adapters off)")
    return trainer


def _fp32_adapters(trainer, exact: dict | None) -> None:
    """Trainable weights back in fp32, with their exact values: autocast computes in the low precision, the
    weights, gradients and optimiser states it updates stay fp32. exact=None: left as they are (FSDP)."""
    import torch
    if exact is None:
        return
    for n, p in trainer.model.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = exact[n].to(p.device) if n in exact else p.data.float()


def _row_digests(inputs) -> list[str]:
    """A short sha256 of each row of a batch (padding-free batches are one row: split where positions restart).
    Rows share their chat-template prefix, so only the whole row tells them apart."""
    ids = inputs["input_ids"]
    if "position_ids" in inputs and ids.shape[0] == 1:
        cuts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
        rows = [ids[0, a:b] for a, b in zip(cuts, cuts[1:])]
    else:
        mask = inputs.get("attention_mask")
        rows = [r[m.bool()] if mask is not None else r for r, m in zip(ids, mask if mask is not None else ids)]
    return [hashlib.sha256(r.cpu().numpy().tobytes()).hexdigest()[:12] for r in rows]


def lora_digest(model) -> str:
    """sha256 of the trainable (LoRA) weights, in parameter order: equal on every rank of a DDP run."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_adapter(trainer, tokenizer, cfg: RunConfig, run_dir: Path) -> Path:
    out = run_dir / ADAPTER
    # only the trained adapter: a dpo run also holds TRL's frozen "ref" copy, which peft would save beside it
    trainer.model.save_pretrained(out, safe_serialization=True, selected_adapters=["default"])
    tokenizer.save_pretrained(out)  # with the chat template models.load_tokenizer made sure it has
    cfg.save(out / STUDIO_CONFIG)
    return out


def run(cfg: RunConfig, run_dir: Path, resume: bool = False) -> int:
    """Train one run into run_dir, holding the machine's trainer lock throughout. Returns the process exit code
    (2: another trainer holds the lock, and run_dir was not touched); status.json tells the outcome."""
    import contextlib

    from .runs import RunError, trainer_lock
    # one process of a group takes the machine's lock: the `studio train` parent (launch_group) when there is
    # one, else the first rank on this machine (a group started by `accelerate launch` directly)
    skip = distributed.in_group() and (os.environ.get(distributed.GROUP_LOCK_ENV) or distributed.local_rank() > 0)
    try:
        with contextlib.nullcontext() if skip else trainer_lock(run_dir):
            return _run(cfg, run_dir, resume)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(cfg: RunConfig, run_dir: Path, resume: bool) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    stop = _Stop(run_dir)
    previous_handlers = stop.install()
    main = distributed.is_main()  # rank 0 (or the only process) keeps the run folder
    if main:
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # a stale request must not end the new attempt
    if main and not (run_dir / CONFIG).exists():
        cfg.save(run_dir / CONFIG)
    before = metrics.read_status(run_dir).get("processes") or 1  # of the attempt that wrote the checkpoints
    metrics.write_status(run_dir, "running", pid=os.getpid(), error=None, message="Loading model and data",
                         started=time.time(), processes=distributed.world_size())
    log.info("Run %s in %s (pid %d)%s.", cfg.name, run_dir, os.getpid(), " resuming" if resume else "")
    counter = TokenCounter()
    try:
        t = cfg.train
        callback = metrics.make_callback(run_dir, stop, counter, overfit_evals=t.overfit_evals,
                                         patience=t.early_stopping_patience, min_delta=t.early_stopping_min_delta)
        trainer, tokenizer, _ = build_trainer(cfg, run_dir, [callback], counter)
        if distributed.any_rank(stop()):
            metrics.write_status(run_dir, "stopped", message="Stopped before training began.")
            return 0
        ckpt = latest_checkpoint(run_dir) if resume else None
        if resume:
            damaged = [p.name for p in checkpoints(run_dir, intact=False) if not is_intact(p)
                       and (ckpt is None or checkpoint_step(p) > checkpoint_step(ckpt))]
            if damaged:
                log.warning("Skipping %s: damaged (a file is cut short or unreadable, e.g. after a full disk); %s.",
                            ", ".join(damaged), f"resuming from {ckpt.name}" if ckpt else "no intact checkpoint")
        if resume and ckpt is None:
            log.info("No checkpoint to resume from: starting at step 0.")
        if ckpt is not None:
            n = distributed.world_size()
            metrics.append_metrics(run_dir, {"kind": "resume", "step": checkpoint_step(ckpt), "processes": n,
                                             "time": time.time()})
            log.info("Resuming from %s (step %d).", ckpt.name, checkpoint_step(ckpt))
            if n != before:
                # transformers resumes the model, optimiser and schedule; each process's data order restarts
                log.warning("The checkpoint was written by %d process%s and resumes with %d: a step now takes %d x "
                            "Batch size rows, and the rows after the checkpoint come in a new order.", before,
                            "" if before == 1 else "es", n, n)
        metrics.write_status(run_dir, "running", message="Training")
        t0 = time.time()
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        steps = trainer.state.global_step
        stopped = distributed.any_rank(stop())
        losses = metrics.loss_series(run_dir)
        unmeasured = trainer.eval_dataset is not None and (not losses.eval or losses.eval[-1][0] != steps)
        if distributed.from_main([unmeasured and not stopped])[0]:  # rank 0 read the losses; all evaluate
            trainer.evaluate()
            losses = metrics.loss_series(run_dir)
        tokens, trained = distributed.sum_ranks(counter.input_tokens, counter.trained_tokens)
        if distributed.in_group():
            log.info("Rank %d LoRA weights sha256 %s.", distributed.rank(), lora_digest(trainer.model))
        out = save_adapter(trainer, tokenizer, cfg, run_dir) if main else run_dir / ADAPTER
        dt = time.time() - t0
        log.info("%s %d steps in %.0f s; %d tokens (%d trained), %.1f tokens/s%s; final train loss %s, eval loss "
                 "%s.", f"Saved the adapter to {out}." if main else "Rank 0 saves the adapter.", steps, dt, tokens,
                 trained, tokens / max(dt, 1e-9),
                 f" over {distributed.world_size()} processes" if distributed.in_group() else "",
                 _fmt(losses.last_train), _fmt(losses.last_eval))
        peak = _peak_memory_gb()
        metrics.append_metrics(run_dir, {"kind": "summary", "step": steps, "wall_s": round(dt, 1),
                                         "tokens_per_s": round(tokens / max(dt, 1e-9), 2),
                                         "processes": distributed.world_size(),
                                         "peak_memory_gb": peak, "time": time.time()})
        final = "stopped" if stopped else "finished"
        message = f"{final.capitalize()} at step {steps}; adapter saved."
        if callback.early_stop and final == "finished":
            es = callback.early_stop
            message = (f"Stopped early at step {steps}: the eval loss had not improved for {es['patience']} "
                       f"evaluations; it was lowest at step {es['best_step']} ({es['best_eval_loss']:.4f}), "
                       f"whose checkpoint is kept. Adapter saved.")
        metrics.write_status(run_dir, final, step=steps, message=message, peak_memory_gb=peak)
        return 0
    except Exception as e:  # every failure ends as a readable status, the traceback goes to train.log
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            _remove_incomplete_checkpoints(run_dir)  # half-written: useless, and they hold the space back
        msg = explain(e, run_dir)
        log.error(msg)
        try:
            _log_file_only(run_dir, traceback.format_exc())  # for a bug report; the console stays readable
            metrics.write_status(run_dir, "failed", error=msg, message=msg)
        except OSError:  # a full disk or a removed folder: the console has the message; readers see a dead pid
            print(f"error: {msg}", file=sys.stderr)
        return 1
    finally:
        if main:
            (run_dir / STOP_FILE).unlink(missing_ok=True)
        for sig, h in previous_handlers.items():
            signal.signal(sig, h)


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


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _log_file_only(run_dir: Path, text: str) -> None:
    with open(run_dir / LOG, "a", encoding="utf-8") as f:
        f.write(text + "\n")


def explain(e: BaseException, run_dir: Path | None = None) -> str:
    """Turn an exception into a sentence that says what to change."""
    from .data import DataError
    from .models import ModelError
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return _disk_full(Path(run_dir) if run_dir else Path.cwd())
    if isinstance(e, (DataError, ModelError, metrics.NonFiniteLoss, ValueError)) and not _is_oom(e):
        return str(e)
    if _is_oom(e):
        return ("Out of memory. Lower the batch size (and raise gradient accumulation to keep the effective "
                "batch), lower Max sequence length, turn on gradient checkpointing, or use 4-bit quantisation.")
    return f"{type(e).__name__}: {e}"


def _remove_incomplete_checkpoints(run_dir: Path) -> list[str]:
    """Delete checkpoint folders that were never completed (no trainer_state.json: transformers writes it last);
    complete ones, damaged or not, are left to the user."""
    import shutil
    complete = {p.name for p in checkpoints(run_dir, intact=False)}
    folder = run_dir / CHECKPOINTS
    gone = []
    for p in sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []:
        if p.is_dir() and p.name not in complete:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    if gone:
        log.info("Removed the incomplete %s after the disk filled up.", ", ".join(gone))
    return gone


def _disk_full(run_dir: Path) -> str:
    """"Disk full: N MB free in <folder>; a checkpoint of this run needs ~M MB. ..." (M from the newest checkpoint
    on disk, when there is one)."""
    import shutil
    where = run_dir if run_dir.exists() else run_dir.parent
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.0f} MB free in {where}"
    except OSError:
        free = f"no space left in {where}"
    need = ""
    ckpt = latest_checkpoint(run_dir) if run_dir.exists() else None
    if ckpt is not None:
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        need = f"; a checkpoint of this run needs ~{size / 2**20:.0f} MB"
    return (f"Disk full: {free}{need}. Free some space (or lower Checkpoints kept), then Resume: it continues "
            f"from the last complete checkpoint.")


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()
