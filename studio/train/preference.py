"""The preference glue (dpo, kto): rows kept as TRL's conversational preference shapes, and TRL's trainer for the
stage (studio.stages names it) on a PeftModel with no ref_model, counting the tokens it trains on."""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import RunConfig
from ..stages import Stage
from .datasets import log_report, split_and_keep
from .sft import FirstStepLearns

log = logging.getLogger("studio.train")


def prepare(stage: Stage, cfg: RunConfig, run_dir: Path, tokenizer=None):
    """The stage's rows (pairs, rated answers): read + validate, split, and keep what the other tabs read: the
    stage's own file, and dataset.jsonl / eval.jsonl as conversations (prompt + the chosen or good answer: Chat's
    held-out comparison measures against them). Returns (train_ds, eval_ds, report)."""
    from datasets import Dataset

    from .. import data

    kind = data.kind(stage.data)
    report = kind.read(cfg.data)
    log_report(kind.label, report, cfg, run_dir)
    problem = stage.too_few(cfg.data.path, len(report.examples))
    if problem:
        raise data.DataError(problem)
    balance = kind.balance(report.examples)
    if balance:
        log.warning("%s", balance)
    train_ex, eval_ex = split_and_keep(cfg, run_dir, report.examples, kind, stage.run_file)
    log.info("Split: %s for training, %d held out (seed %d).", kind.count(train_ex), len(eval_ex), cfg.train.seed)
    return Dataset.from_list(train_ex), Dataset.from_list(eval_ex) if eval_ex else None, report


def build(stage: Stage, model, tokenizer, common: dict, cfg: RunConfig, train_ds, eval_ds, callbacks, counter,
          device: str, fsdp: bool):
    """TRL's DPOTrainer (pairs) or KTOTrainer (rated answers), as the stage names them, on a PeftModel and no
    ref_model: each copies the "default" adapter into a frozen "ref" adapter (read in trl/trainer/dpo_trainer.py and
    kto_trainer.py, 1.16), so the reference is the adapter we start from and the 4-bit base is in memory once. With a
    new adapter, the reference is the base (adapters disabled)."""
    import trl

    t = cfg.train
    extra = stage.trainer_args(t)
    args = getattr(trl, stage.trainer_config)(**common, **extra, max_length=t.max_length, remove_unused_columns=False)

    class StudioPreferenceTrainer(FirstStepLearns, getattr(trl, stage.trainer)):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                counter.input_tokens += int(inputs["attention_mask"].sum())
                counter.trained_tokens += int(inputs["completion_mask"].sum())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = StudioPreferenceTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                      processing_class=tokenizer, callbacks=list(callbacks))
    settings = ", ".join(f"{k} {'+'.join(v) if isinstance(v, list) else format(v, 'g')}" for k, v in extra.items())
    log.info("%s: %s; reference: %s; speed levers: none (measured for SFT only).", stage.name.upper(), settings,
             "the starting adapter, frozen" if "ref" in trainer.model.peft_config else "the base model (adapters off)")
    return trainer
