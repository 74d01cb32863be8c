"""THE registry of training stages: each stage (sft, dpo, kto, grpo) declared once, with everything the rest of the
studio needs to know about it.

An entry names the kind of rows it trains on (studio.data.kinds reads, checks and writes each kind), the file a
run keeps its own copy of them in, the TRL trainer and config class it builds and the glue in studio.train that
builds them, the stage's own TRL arguments, its activation factor for the memory estimate, what it logs beyond the
loss and the chart that shows it, and its config checks. config validates `train.stage` against this table; runs,
train, memory and the UI ask it instead of branching on a stage's name. A new stage is one new entry here (plus its
trainer glue, and its kind of data when it reads a new one).

This module imports nothing of the studio, so config (the bottom of the house) can use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str                  # train.stage
    help: str                  # one sentence for the Training stage field
    data: str                  # the kind of rows it trains on: studio.data.kinds ("conversations", "pairs", "rated")
    run_file: str              # the run's own copy of them, in its folder
    trainer: str               # TRL's trainer class
    trainer_config: str        # TRL's config class for it
    glue: str                  # studio.train's builder for it: "sft" (padding-free SFT) or "preference"
    activation_factor: float = 1.0  # sequences per row the memory estimate counts activations for
    memory_note: str = ""      # said with the estimate when the factor is not 1
    packing: bool = True       # padding-free batches and the SFT speed levers apply
    frozen_reference: bool = False  # the starting adapter is also the frozen reference of the loss
    min_rows: int = 1          # fewer usable rows refuse to train
    more_rows: str = ""        # what to do then
    min_batch: int = 1         # Batch size below this is refused by the config
    min_batch_why: str = ""
    logged: dict[str, str] = field(default_factory=dict)  # TRL log key -> metrics.jsonl key, beyond the loss
    # the Train tab's third chart: (title, ((metrics.jsonl key, series name), ...)); None: the gradient norm
    chart: tuple[str, tuple[tuple[str, str], ...]] | None = None
    trainer_args: Callable[[Any], dict] = field(default=lambda train: {})  # stage fields of TrainSettings -> TRL config
    needs_checks: bool = False  # trains for the run's checks (config `checks:`): one with a weight above 0 is required
    # tokens of one sequence the stage trains on, from the longer rows' length (the memory estimate)
    sequence_tokens: Callable[[Any, float], float] = field(default=lambda train, row: min(row, train.max_length))
    generates: bool = False     # samples answers while training (the memory estimate counts their KV cache)
    rule: Callable[[Any], str | None] = field(default=lambda train: None)  # a further check of TrainSettings

    def check(self, train: Any) -> str | None:
        """What is wrong with a TrainSettings for this stage, as a sentence; None when it is fine."""
        if train.batch_size < self.min_batch:
            return f"{self.name.upper()} needs Batch size {self.min_batch} or more: {self.min_batch_why}."
        return self.rule(train)

    def logged_for(self, check_names: list[str]) -> dict[str, str]:
        """`logged`, plus each check's mean reward (check_<name>) for a stage that trains for the checks."""
        if not self.needs_checks:
            return dict(self.logged)
        return {**self.logged, **{f"rewards/{n}/mean": CHECK_KEY.format(n) for n in check_names}}

    def too_few(self, path: str, n: int) -> str | None:
        """The refusal when a run's data has fewer than min_rows usable rows, else None."""
        if n >= self.min_rows:
            return None
        return f"{path}: {n} usable {self.more_rows}"


# what TRL's DPOTrainer and KTOTrainer log (rewards = beta * log-ratio of policy to reference) -> metrics.jsonl
PREFERENCE_REWARDS = {"rewards/margins": "reward_margin", "rewards/accuracies": "reward_accuracy",
                      "rewards/chosen": "reward_chosen", "rewards/rejected": "reward_rejected"}
# the reward margin: how much more the tuned model prefers the chosen answer than the reference does, times beta;
# the accuracy: the share of pairs it ranks right
REWARD_CHART = ("DPO rewards", (("reward_margin", "reward margin"), ("reward_accuracy", "preference accuracy")))

# what TRL's GRPOTrainer logs (trl/trainer/grpo_trainer.py, 1.16) -> metrics.jsonl; each check's mean reward comes
# too, as check_<name> (CHECK_KEY)
GRPO_LOGGED = {"reward": "reward", "reward_std": "reward_std", "frac_reward_zero_std": "reward_flat", "kl": "kl",
               "completions/mean_length": "completion_length", "completions/clipped_ratio": "completion_clipped"}
CHECK_KEY = "check_{}"


def _grpo_rule(t: Any) -> str | None:
    if (t.batch_size * t.grad_accum) % t.grpo_generations:
        return (f"GRPO compares the {t.grpo_generations} answers of each prompt within a step, so Batch size x "
                f"Gradient accumulation ({t.batch_size} x {t.grad_accum}) must be a multiple of Answers per prompt "
                f"({t.grpo_generations}): e.g. Batch size {t.grpo_generations}.")
    return None


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("sft", "learn to answer like the examples (instruction tuning)",
          data="conversations", run_file="dataset.jsonl", trainer="SFTTrainer", trainer_config="SFTConfig",
          glue="sft"),
    Stage("dpo", "preference tuning (Direct Preference Optimisation) on pairs of a better and a worse answer, "
                 "usually on top of an SFT run's adapter (Start from); the data file must hold prompt/chosen/rejected "
                 "pairs",
          data="pairs", run_file="pairs.jsonl", trainer="DPOTrainer", trainer_config="DPOConfig", glue="preference",
          # each row is a chosen and a rejected answer, one batch of 2x rows; the reference forward runs without
          # gradients, so it adds little
          activation_factor=2.0, memory_note="dpo: every row is two sequences", packing=False,
          frozen_reference=True, min_rows=2,
          more_rows="preference pair(s); DPO needs at least 2 (a few dozen to learn much). Vote on more answers in "
                    "the Chat tab, or add pairs.",
          logged=PREFERENCE_REWARDS, chart=REWARD_CHART,
          trainer_args=lambda t: {"beta": t.dpo_beta, "loss_type": t.dpo_loss.split("+")}),
    Stage("kto", "the same from single answers rated good or bad (prompt/completion/label, e.g. the Chat tab's "
                 "thumbs up/down)",
          data="rated", run_file="unpaired.jsonl", trainer="KTOTrainer", trainer_config="KTOConfig", glue="preference",
          # each answer and a mismatched one for its KL term
          activation_factor=2.0, memory_note="kto: every row is two sequences", packing=False,
          frozen_reference=True, min_rows=2,
          more_rows="rated answer(s); KTO needs at least 2 (a few dozen to learn much). Rate more answers with 👍/👎 "
                    "in the Chat tab.",
          min_batch=2, min_batch_why="it estimates its reference term from the other rows of a batch",
          logged=PREFERENCE_REWARDS, chart=REWARD_CHART,
          trainer_args=lambda t: {"beta": t.dpo_beta}),
    Stage("grpo", "reinforcement learning for the run's checks (GRPO): the model answers each prompt several times "
                  "and the answers the checks score higher are made more likely; usually on top of an SFT run's "
                  "adapter (Start from); any instruction data file (its answers are the checks' references)",
          data="conversations", run_file="dataset.jsonl", trainer="GRPOTrainer", trainer_config="GRPOConfig",
          glue="grpo", packing=False, needs_checks=True, generates=True, rule=_grpo_rule,
          memory_note="grpo: Batch size counts answers (the prompt + up to Longest answer tokens each)",
          sequence_tokens=lambda t, row: min(row, t.max_length) + t.grpo_max_completion,
          logged=GRPO_LOGGED, chart=("GRPO rewards", (("reward", "reward (weighted sum of the checks)"),
                                                      ("reward_std", "its spread (std)"),
                                                      ("reward_flat", "share of prompts whose answers scored alike"),
                                                      ("kl", "KL to the start (beta above 0)"))),
          trainer_args=lambda t: {"num_generations": t.grpo_generations,
                                  "max_completion_length": t.grpo_max_completion, "beta": t.grpo_beta,
                                  "temperature": t.grpo_temperature}),
)}

NAMES = tuple(STAGES)


def get(name: str) -> Stage:
    """The stage called `name`; ValueError naming the known ones."""
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"Training stage '{name}' is not known: use one of {', '.join(NAMES)}.") from None


def for_data(kind: str) -> Stage | None:
    """The first stage that trains on rows of this kind (what a file of such rows is for), or None."""
    return next((s for s in STAGES.values() if s.data == kind), None)


def field_help() -> str:
    """The Training stage field's help: one clause per stage."""
    return ". ".join(f"{s.name}: {s.help}" for s in STAGES.values()) + "."
