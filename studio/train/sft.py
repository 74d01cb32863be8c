"""The SFT glue: rows tokenized with the chat template and the assistant-only mask, padding-free batches, and TRL's
SFTTrainer with the token counts and the speed levers (studio.train.speed)."""
from __future__ import annotations

import hashlib
import json
import logging
from functools import partial
from pathlib import Path

from ..config import RunConfig
from ..env import ranks
from ..stages import Stage
from . import speed
from .datasets import log_report, split_and_keep

log = logging.getLogger("studio.train")


def prepare(stage: Stage, cfg: RunConfig, run_dir: Path, tokenizer):
    """Read + validate the data, split it, tokenize with the chat template. Returns (train_ds, eval_ds, report)."""
    from datasets import Dataset

    from .. import data

    kind = data.kind(stage.data)
    report = kind.read(cfg.data)
    log_report("Data", report, cfg, run_dir)
    from ..evals.rows import report_cells
    train_ex, eval_ex = split_and_keep(cfg, run_dir, report.examples, kind, stage.run_file, cells=report_cells(report))
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


def batching(t) -> dict:
    """SFTConfig batching. 'Packing' = padding-free batches of `batch_size` rows, not TRL's bins.

    Each batch's rows are concatenated into one sequence (attention kept per row by speed.packed_attention),
    so no compute goes to padding, and a step still takes `batch_size` rows: the same steps per epoch and
    rows per optimiser step as an unpacked run, so learning rate and batch size mean what they say.
    TRL's 512-token bins put ~28 sample rows in each of the 4 rows of a batch: 7x the tokens per step,
    7x fewer updates per epoch and 7x the activation memory (3.8x the peak RSS, bench/RESULTS.md).
    """
    if t.packing:
        # rows are already cut at max_length by prepare; TRL refuses max_length with padding_free alone
        return dict(packing=False, padding_free=True, max_length=None, train_sampling_strategy="random")
    # similar lengths in a batch means little padding when packing is off
    return dict(packing=False, padding_free=False, max_length=t.max_length,
                train_sampling_strategy="group_by_length")


def _one_step_later(step: int, *, inner, warmup: int) -> float:
    return inner(step + 1) if step < warmup else inner(step)


def warm_from_step_one(scheduler, warmup_steps: int):
    """transformers' warm-up starts at factor 0 (step s of W trains at s / W of the rate), so the first optimiser step
    learns nothing: on a 6-step run two runs 5x apart in learning rate logged the same step-2 loss (issue 23). This
    returns a LambdaLR on the same optimiser whose warm-up reads the schedule one step later: (s + 1) / W, so 1 / W
    at the first step and the full rate at step W, then the schedule as it was. Without warm-up, or for a schedule
    that is not a LambdaLR, the scheduler itself."""
    from torch.optim.lr_scheduler import LambdaLR
    if warmup_steps <= 0 or type(scheduler) is not LambdaLR:
        return scheduler
    # a partial, not a lambda, so LambdaLR's state_dict (a checkpoint) can hold it
    return LambdaLR(scheduler.optimizer, [partial(_one_step_later, inner=f, warmup=warmup_steps)
                                          for f in scheduler.lr_lambdas])


class FirstStepLearns:
    """Mixed into a stage's trainer class, through transformers' own create_scheduler hook: its schedule's warm-up
    starts above 0 (warm_from_step_one). Put it before the TRL trainer: class T(FirstStepLearns, SFTTrainer)."""

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        fresh = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if fresh:
            self.lr_scheduler = warm_from_step_one(scheduler, self.args.get_warmup_steps(num_training_steps))
        return self.lr_scheduler


def build(stage: Stage, model, tokenizer, common: dict, cfg: RunConfig, train_ds, eval_ds, callbacks, counter,
          device: str, fsdp: bool):
    """TRL's SFTTrainer counting the tokens it trains on, with the run's speed levers applied."""
    from trl import SFTConfig, SFTTrainer

    kind = "cuda" if device.startswith("cuda") else device
    levers = speed.resolve(cfg.train.levers, kind)
    args = SFTConfig(**common, **batching(cfg.train), **stage.trainer_args(cfg.train), remove_unused_columns=True,
                     use_liger_kernel=speed.use_liger(levers, kind),
                     # NEFTune: noisy embeddings for instruction tuning; transformers' None is off, the config's 0
                     neftune_noise_alpha=cfg.train.neftune_noise_alpha or None)
    group = ranks.in_group()

    class StudioSFTTrainer(FirstStepLearns, SFTTrainer):
        studio_labelled_head = False  # set by speed.apply when the lmhead lever is on

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and group and counter.input_tokens == 0:
                # each rank's first batch, so a test (or a user) can see the ranks were given different rows
                log.info("Rank %d first batch: %s", ranks.rank(), json.dumps(row_digests(inputs)))
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
    return trainer


def row_digests(inputs) -> list[str]:
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
