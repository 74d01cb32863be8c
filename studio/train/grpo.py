"""The GRPO glue: prompts from any instruction data (each row's answer and its other cells become what the checks
compare to), the run's checks as TRL's reward functions (weighted by their weights), and TRL's GRPOTrainer on the
PeftModel, counting the tokens it trains on and warning about a check that never varies (it teaches nothing)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..config import RunConfig
from ..runs import events
from ..stages import CHECK_KEY, Stage
from .datasets import log_report, split_and_keep
from .sft import FirstStepLearns

log = logging.getLogger("studio.train")
ROW = "check_row"   # the dataset column holding each row's reference and other cells, as JSON, for the checks
FLAT_LOGS = 3       # a check whose rewards did not vary in this many logs in a row is said to teach nothing


class CheckReward:
    """One check as a TRL reward function: TRL calls it with the completions and the dataset's columns (ours: ROW);
    its __name__ is the check's name, which TRL logs its reward under (rewards/<name>/mean)."""

    def __init__(self, check):
        self.check = check
        self.__name__ = check.name

    def __call__(self, prompts=None, completions=None, check_row=None, **kw) -> list[float]:
        from ..checks import score
        out = []
        for completion, raw in zip(completions, check_row):
            text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
            out.append(float(score(self.check, text, json.loads(raw))))
        return out


def prepare(stage: Stage, cfg: RunConfig, run_dir: Path, tokenizer):
    """The prompts (a row's turns before its answer) with their check rows, split as every stage splits; prompts
    longer than Max sequence length are left out (TRL would not cut them). Returns (train_ds, None, report): GRPO
    is evaluated on the checks after training (studio.evals), not by an eval loss."""
    from datasets import Dataset

    from .. import data
    from ..checks import check_columns
    from ..evals.rows import columns_of, make_row, report_cells

    kind = data.kind(stage.data)
    report = kind.read(cfg.data)
    log_report("Data", report, cfg, run_dir)
    cells = report_cells(report)
    train_ex, eval_ex = split_and_keep(cfg, run_dir, report.examples, kind, stage.run_file, cells=cells)
    train_cells = data.split(cells, cfg.train.eval_fraction, cfg.train.seed)[0]
    rows = [make_row(m, r, c) for m, r, c in zip(train_ex, range(1, len(train_ex) + 1), train_cells)]
    check_columns(cfg.check_list(), columns_of(rows))
    kept, long = [], 0
    for r in rows:
        if not r["prompt"] or r["reference"] is None:
            continue
        ids = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)
        if len(ids["input_ids"] if isinstance(ids, dict) else ids) > cfg.train.max_length:
            long += 1
            continue
        kept.append({"prompt": r["prompt"],
                     ROW: json.dumps({"reference": r["reference"], "columns": r["columns"]}, ensure_ascii=False)})
    if long:
        log.warning("%d prompt(s) are longer than Max sequence length (%d tokens) and are left out.", long,
                    cfg.train.max_length)
    if not kept:
        raise data.DataError(f"{cfg.data.path}: no prompt fits in Max sequence length ({cfg.train.max_length} "
                             f"tokens). Raise it.")
    log.info("Split: %d training prompts, %d held out for evaluation on the checks (seed %d).", len(kept),
             len(eval_ex), cfg.train.seed)
    return Dataset.from_list(kept), None, report


def build(stage: Stage, model, tokenizer, common: dict, cfg: RunConfig, train_ds, eval_ds, callbacks, counter,
          device: str, fsdp: bool):
    """TRL's GRPOTrainer on the PeftModel, the run's checks as its reward functions (`reward_weights` their weights:
    a weight-0 check is logged, not rewarded). With beta above 0 TRL keeps a frozen copy of the starting adapter as
    the KL reference; at 0 (the default) none."""
    import dataclasses

    import trl

    checks = cfg.check_list()
    extra = stage.trainer_args(cfg.train)
    known = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    args = trl.GRPOConfig(**{k: v for k, v in common.items() if k in known}, **extra,
                          reward_weights=[c.weight for c in checks], remove_unused_columns=False)

    class StudioGRPOTrainer(FirstStepLearns, trl.GRPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                done = int(inputs["completion_mask"].sum())
                counter.input_tokens += int(inputs["prompt_mask"].sum()) + done
                counter.trained_tokens += done
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    trainer = StudioGRPOTrainer(model=model, reward_funcs=[CheckReward(c) for c in checks], args=args,
                                train_dataset=train_ds, processing_class=tokenizer,
                                callbacks=list(callbacks) + [flat_checks(Path(common["output_dir"]).parent, checks)])
    log.info("GRPO: %s; checks as rewards: %s; reference: %s; speed levers: none (measured for SFT only).",
             ", ".join(f"{k} {v:g}" for k, v in extra.items()),
             ", ".join(f"{c.name} (weight {c.weight:g})" for c in checks),
             "the starting adapter, frozen (KL beta above 0)" if extra["beta"] > 0 else "none (KL beta 0)")
    return trainer


def flat_checks(run_dir: Path, checks):
    """A TrainerCallback that warns, once per check, when a rewarded check scored every answer alike in FLAT_LOGS
    logs in a row: all pass or all fail, nothing to learn from (a check too hard, too easy, or wrong)."""
    from transformers import TrainerCallback

    watched = [c.name for c in checks if c.weight > 0]

    class FlatChecks(TrainerCallback):
        def __init__(self):
            self.flat = {n: 0 for n in watched}
            self.said: set[str] = set()

        def on_log(self, args, state, control, logs=None, **kw):
            from ..env import ranks
            logs = logs or {}
            for name in watched:
                std = logs.get(f"rewards/{name}/std")
                if std is None:
                    continue
                self.flat[name] = self.flat[name] + 1 if float(std) == 0 else 0
                if self.flat[name] >= FLAT_LOGS and name not in self.said and ranks.is_main():
                    self.said.add(name)
                    mean = float(logs.get(f"rewards/{name}/mean", 0.0))
                    why = "every answer passes it" if mean >= 1 else "no answer passes it" if mean <= 0 else \
                        f"every answer scores {mean:.2f} on it"
                    log.warning("Check '%s' has scored every answer alike for %d logs (%s): it teaches nothing. "
                                "Check it against the data's answers (studio checks), or make it easier or harder.",
                                name, FLAT_LOGS, why)
                    events.append_metrics(run_dir, {"kind": "flat_check", "step": state.global_step, "check": name,
                                                    "key": CHECK_KEY.format(name), "mean": mean, "why": why,
                                                    "time": time.time()})
            return control

    return FlatChecks()
