"""The sections of a run config (model, LoRA, training, data and its column mapping) and the Chat tab's generation
settings: dataclasses that validate themselves on construction and raise ValueError with a sentence a user can act
on. Every field is documented once, in its metadata (fields._f)."""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .. import stages
from ..train.speed import LEVERS, MEASURED
from ..train.trackers import TRACKERS
from ..env.safeyaml import short
from .fields import check_fields, names, require, setting, shape

DEMO_MODEL = "demo"  # alias for the bundled SmolLM2-135M-Instruct (see studio.models)

QUANTIZATIONS = ("nf4", "none")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
OPTIMIZERS = ("auto", "adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "adamw_8bit")
DATA_FORMATS = ("auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text")
# The chat templates studio.models.templates names (for base models that ship none, or the wrong one for the data);
# kept here because studio.config is imported by studio.models, not the other way round.
CHAT_TEMPLATES = ("auto", "chatml", "llama3", "gemma", "mistral", "phi3", "phi4", "alpaca")


@dataclass
class ModelSettings:
    source: str = setting(DEMO_MODEL, "Base model",
                          "The model to fine-tune: 'demo' (a small bundled one), one from the list, or a local folder "
                          "or hub id you type.",
                          more="Which model to fine-tune: 'demo' (the bundled SmolLM2-135M-Instruct), a local folder in"
                               " Hugging Face format, or a hub id such as HuggingFaceTB/SmolLM2-360M-Instruct.")
    quantization: str = setting("nf4", "Quantisation",
                                "nf4 keeps the frozen base in 4 bits (QLoRA, about 4x less memory); none trains plain "
                                "LoRA on a full-precision base.",
                                more="'nf4' loads the frozen base in 4-bit NormalFloat through bitsandbytes (QLoRA): "
                                     "about 4x less memory for the weights. 'none' trains plain LoRA on a "
                                     "full-precision base.",
                                choices=QUANTIZATIONS)
    double_quant: bool = setting(True, "Double quantisation",
                                 "Also compress the 4-bit scales, saving about 0.4 bits per weight at no measurable "
                                 "quality cost.",
                                 more="Also quantise the 4-bit scales (saves ~0.4 bits per weight, about 3 GB on a 65B "
                                      "model); no measurable quality cost.")
    compute_dtype: str = setting("auto", "Compute dtype",
                                 "Precision of the matrix work; 'auto' picks the fastest this machine supports and "
                                 "notes the choice in the run's log.",
                                 more="Precision of the matrix work, as mixed precision: LoRA weights, gradients and "
                                      "optimiser states stay float32. 'auto' picks bfloat16 on GPUs of compute "
                                      "capability 8.0 and later (Ampere on), float16 below (T4, V100, RTX 20xx), and on"
                                      " a CPU what a short measurement finds faster: bfloat16 where the CPU has native "
                                      "bf16 (AVX512-BF16, AMX: ~4x fp32 here), float32 where it has not (AVX2 only: "
                                      "bf16 is ~100x slower). The measurement and the choice are in the run's "
                                      "train.log; `studio precision` shows them (--remeasure takes them again).",
                                 choices=COMPUTE_DTYPES)
    trust_remote_code: bool = setting(False, "Trust remote code",
                                      "Run Python code shipped with the model; leave off unless you trust its author.")
    chat_template: str = setting("auto", "Chat template",
                                 "How conversations are written out for the model: 'auto' uses the tokenizer's own; "
                                 "pick another, or type the path of a .jinja file.",
                                 more="How conversations are written out for the model. 'auto': the tokenizer's own "
                                      "(ChatML where it has none). For a base model without one, or with the wrong one "
                                      "for your data: chatml (Qwen, SmolLM), llama3, gemma, mistral ([INST]), phi3 "
                                      "(Phi-3, 3.5, 4-mini), phi4 (Phi-4 14B), alpaca (plain ### Instruction / ### "
                                      "Response text); or the path of a .jinja file. The choice is saved with the "
                                      "adapter and exported with it.",
                                 suggestions=CHAT_TEMPLATES)

    def __post_init__(self) -> None:
        require(isinstance(self.source, str) and self.source.strip() != "",
              "Base model is empty: choose 'demo', a local model folder, or a hub id.")
        self.source = self.source.strip()
        if self.chat_template is None or self.chat_template == "":  # an empty YAML value or form box
            self.chat_template = "auto"
        check_fields(self)
        self.chat_template = self.chat_template.strip()
        require(self.chat_template in CHAT_TEMPLATES or _readable_jinja(self.chat_template),
                f"Chat template (model.chat_template) {short(self.chat_template)} is neither one of "
                f"{', '.join(CHAT_TEMPLATES)} nor a readable .jinja file: pick a name, or give the path of a Jinja "
                f"chat template file ending in .jinja.")


def _readable_jinja(path: str) -> bool:
    p = Path(path).expanduser()
    try:
        return p.suffix.lower() == ".jinja" and p.is_file() and os.access(p, os.R_OK)
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


@dataclass
class LoraSettings:
    r: int = setting(16, "LoRA rank (r)",
                     "Size of the update: 8-16 suits style and format, 32-64 new knowledge; memory and adapter size "
                     "grow with it.",
                     more="Size of the low-rank update. 8-16 suits style and format; 32-64 for new knowledge. Memory "
                          "and adapter size grow linearly with r.", minimum=1, maximum=512)
    alpha: int = setting(32, "LoRA alpha",
                         "Scale of the update (effective scale = alpha / r); twice the rank is the common default.",
                         minimum=1, maximum=1024, hint="2 x rank is a good start")
    dropout: float = setting(0.05, "LoRA dropout",
                             "Dropout on the LoRA input; 0.05 helps small data sets, 0 is fine above ~10k rows.",
                             minimum=0.0, maximum=0.5, step=0.01, widget="slider")
    target_modules: list = setting(["all-linear"], "Target modules",
                                   "Which layers get adapters: 'all-linear' (best quality per the QLoRA paper) or layer"
                                   " names such as q_proj, v_proj.",
                                   more="Which layers get adapters: 'all-linear' (every linear layer but the output "
                                        "head; best quality per the QLoRA paper) or names such as q_proj, v_proj.")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        require(isinstance(self.target_modules, list) and len(self.target_modules) > 0
              and all(isinstance(m, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+", m) for m in self.target_modules),
              "Target modules must be 'all-linear' or a comma-separated list of layer names such as q_proj, v_proj.")
        check_fields(self)


@dataclass
class TrainSettings:
    learning_rate: float = setting(2e-4, "Learning rate",
                                   "Step size of the optimiser: 2e-4 is the QLoRA paper's value for small models; "
                                   "lower (1e-4) for larger ones or if the loss jumps.", minimum=1e-7, maximum=1e-2,
                                   step=1e-4)
    lr_scheduler: str = setting("cosine", "LR schedule", "How the learning rate changes over the run.",
                                choices=SCHEDULERS)
    warmup_ratio: float = setting(0.03, "Warm-up fraction",
                                  "Share of the steps over which the learning rate ramps up to its full value.",
                                  more="The ramp starts above 0: with W warm-up steps the first step trains at 1/W of "
                                       "the rate (sft; transformers' own schedule starts at 0, so its first step learns"
                                       " nothing), and step W at the full rate.",
                                  minimum=0.0, maximum=0.5, step=0.01, widget="slider")
    epochs: float = setting(1.0, "Epochs", "Passes over the training data (ignored when Max steps is above 0).",
                            minimum=0.01, maximum=100, step=0.5)
    max_steps: int = setting(0, "Max steps",
                             "Stop after this many optimiser steps; 0 means run for the number of epochs.",
                             minimum=0, maximum=1_000_000)
    batch_size: int = setting(4, "Batch size", "Rows per forward pass; larger uses more memory.", minimum=1,
                              maximum=512)
    grad_accum: int = setting(1, "Gradient accumulation",
                              "Forward passes per optimiser step; effective batch = batch size x this.",
                              minimum=1, maximum=512)
    max_length: int = setting(512, "Max sequence length",
                              "Longest training example in tokens; longer rows are cut, and activation memory grows "
                              "with it.",
                              more="Longest training example in tokens; longer rows are cut at this length. Memory for "
                                   "activations grows with it.", minimum=16, maximum=131072)
    packing: bool = setting(True, "Packing",
                            "Lay each batch's rows end to end instead of padding them, so no compute goes to padding.",
                            more="Padding-free batches: the rows of each batch are laid end to end instead of padded to"
                                 " the longest, with attention kept inside each row, so no compute goes to padding. A "
                                 "batch still holds Batch size rows (rows are not merged into longer sequences).")
    gradient_checkpointing: bool = setting(False, "Gradient checkpointing",
                                           "Recompute activations in the backward pass: about 30-40% slower, for a "
                                           "fraction of the activation memory.",
                                           more="Recompute activations in the backward pass: ~30-40% slower, a fraction"
                                                " of the activation memory. On in the Balanced and Quality presets, as "
                                                "in every reference QLoRA recipe; off in Quick, where the demo fits "
                                                "without.")
    optimizer: str = setting("auto", "Optimiser",
                             "auto picks fused AdamW on a GPU and adamw_torch on a CPU; the 8-bit ones save memory on a"
                             " GPU.",
                             more="auto: fused AdamW on CUDA (one kernel for all LoRA weights), adamw_torch on CPU "
                                  "(fused measured no faster there). paged_adamw_8bit / adamw_8bit save memory on CUDA "
                                  "(6 instead of 16 bytes per LoRA weight; paged spills optimiser state to RAM under "
                                  "memory pressure).",
                             choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, "Weight decay", "L2 penalty on the LoRA weights; 0 is usual for LoRA.",
                                  minimum=0.0, maximum=1.0, step=0.01)
    max_grad_norm: float = setting(1.0, "Gradient clipping", "Clip the gradient norm to this (0 turns it off).",
                                   minimum=0.0, maximum=100.0, step=0.1)
    neftune_noise_alpha: float = setting(0.0, "NEFTune noise (alpha)",
                                         "Noise on the input embeddings while training (NEFTune): 5 often gives more "
                                         "helpful chat answers, 0 turns it off; sft stage only.",
                                         more="Random noise added to the input embeddings while training (NEFTune, "
                                              "TRL's neftune_noise_alpha), of size alpha / sqrt(tokens x width): the "
                                              "NEFTune paper reports more helpful chat answers from instruction tuning "
                                              "with 5 (typical range 5-15). 0 turns it off. The sft stage only. With "
                                              "Packing on, a batch's rows count as one sequence, so the same alpha adds"
                                              " about 1/sqrt(Batch size) as much noise per token.", minimum=0.0,
                                         maximum=100.0, step=0.5)
    seed: int = setting(42, "Seed", "Random seed for the data split, shuffling and LoRA initialisation.",
                        minimum=0, maximum=2**31 - 1)
    eval_fraction: float = setting(0.1, "Held-out fraction",
                                   "Share of rows kept out of training for evaluation and side-by-side comparison.",
                                   minimum=0.0, maximum=0.5, step=0.01, widget="slider")
    logging_steps: int = setting(1, "Log every N steps", "How often a point is added to the loss chart.",
                                 minimum=1, maximum=10000)
    report_to: str = setting("none", "Experiment tracker",
                             "Also log the run to TensorBoard, MLflow, Weights & Biases or Trackio, offline under the "
                             "run folder (needs that package).",
                             more="Also log the run to TensorBoard, MLflow, Weights & Biases or Trackio (transformers' "
                                  "own report_to), offline under the run folder: RUN/tensorboard, RUN/mlruns unless "
                                  "MLFLOW_TRACKING_URI names a server, RUN/wandb in offline mode unless WANDB_MODE says"
                                  " otherwise, RUN/trackio. The run folder stays the studio's record either way. Needs "
                                  "its package (pip install tensorboard, ...; all of them: the studio's trackers "
                                  "extra).",
                             choices=TRACKERS)
    eval_steps: int = setting(0, "Evaluate every N steps",
                              "How often eval loss is measured on the held-out rows; 0 means at the end of each epoch.",
                              minimum=0, maximum=100000)
    save_steps: int = setting(50, "Checkpoint every N steps",
                              "How often a resumable checkpoint is written; stop and resume continue from the last "
                              "one.",
                              minimum=1, maximum=100000)
    save_total_limit: int = setting(3, "Checkpoints kept",
                                    "How many recent checkpoints to keep; the best one is always kept, and 0 keeps them"
                                    " all.",
                                    more="How many recent checkpoints to keep on disk; older ones are deleted, except "
                                         "the best one (lowest eval loss), which is always kept. 0 keeps every "
                                         "checkpoint.",
                                    minimum=0, maximum=10000)
    overfit_evals: int = setting(2, "Overfitting alert after N rises",
                                 "Warn when the eval loss has risen this many evaluations in a row while the train loss"
                                 " still falls; 0 turns it off.",
                                 more="Warn when the eval loss has risen N evaluations in a row while the train loss "
                                      "still falls: the model has begun to learn its training rows by heart. The alert "
                                      "names the step where eval loss was lowest, whose checkpoint is kept. 0 turns the"
                                      " alert off.",
                                 minimum=0, maximum=1000)
    early_stopping_patience: int = setting(0, "Early stopping patience",
                                           "Stop when the eval loss has not improved for this many evaluations in a row"
                                           " (needs held-out rows); 0 never stops early.",
                                           more="Stop the run when the eval loss has not improved for this many "
                                                "evaluations in a row; the best checkpoint is kept. 0 (the default) "
                                                "never stops early. Needs held-out rows.", minimum=0, maximum=1000)
    early_stopping_min_delta: float = setting(0.0, "Early stopping minimum improvement",
                                              "How much lower the eval loss must get to count as an improvement for "
                                              "early stopping (0 = any decrease).", minimum=0.0, maximum=10.0,
                                              step=0.001)
    checks_eval_rows: int = setting(16, "Rows evaluated on the checks after training",
                                    "When the run has checks, how many held-out prompts base and tuned answer at the "
                                    "end to be scored; 0 skips it.",
                                    more="When the run has checks, base and tuned answer this many held-out prompts at "
                                         "the end (greedy, up to 128 new tokens on a CPU, 256 on a GPU) and each check "
                                         "scores both (RUN/evals/, the model card). 0 skips it; `studio eval` does it "
                                         "any time.",
                                    minimum=0, maximum=100000)
    threads: int = setting(0, "CPU threads", "Torch threads on CPU; 0 means one per physical core.",
                           minimum=0, maximum=512)
    levers: list = setting(["auto"], "Speed levers",
                           "Trainer speed-ups that compute the same loss: 'auto' uses those measured faster on this "
                           "kind of device, 'none' turns them off.",
                           more="Trainer speed-ups, each tested to compute the same loss: 'auto' uses those measured "
                                "faster on this kind of device (on the CPU: " + ", ".join(MEASURED["cpu"])
                                + "; on GPUs none yet); pick names to choose, or 'none'. "
                                + "; ".join(f"{k}: {v}" for k, v in LEVERS.items()) + ".",
                           choices=("auto", "none", *LEVERS))
    stage: str = setting("sft", "Training stage",
                         "What the run learns: sft from examples, dpo or kto from preferences, grpo from the run's "
                         "checks.", more=stages.field_help(), choices=stages.NAMES)
    start_from: str = setting("", "Start from",
                              "A finished run or one of its checkpoints to continue from (or a typed folder); empty "
                              "trains a new adapter.",
                              more="An earlier run's folder (its final adapter), one of its checkpoints "
                                   "(RUN/checkpoint-N) or an adapter folder: training continues that adapter instead of"
                                   " a new one. For dpo it is also the frozen reference the preference loss measures "
                                   "against. Empty: a new adapter.")
    dpo_beta: float = setting(0.1, "DPO / KTO beta",
                              "How close the tuned model stays to the reference: higher keeps it closer; 0.1 is the "
                              "papers' value.",
                              more="How far the tuned model may move from the reference: higher keeps it closer. 0.1 is"
                                   " the DPO and KTO papers' value; 0.05-0.5 is the usual range.",
                              minimum=0.001, maximum=10.0, step=0.01)
    dpo_loss: str = setting("sigmoid+sft", "DPO loss",
                            "The preference loss: sigmoid+sft (DPO plus the chosen answers' own loss) keeps a small set"
                            " from pushing the model into odd text.",
                            more="sigmoid+sft: the DPO paper's loss plus the chosen answers' language-model loss (RPO),"
                                 " which keeps a small preference set from pushing the model into odd text. sigmoid: "
                                 "DPO alone. ipo: bounded, for noisy preferences. hinge: SLiC's margin loss. robust: "
                                 "tolerates some wrongly labelled pairs.",
                            choices=("sigmoid+sft", "sigmoid", "ipo", "hinge", "robust"))
    grpo_generations: int = setting(4, "Answers per prompt (GRPO)",
                                    "How many answers GRPO samples per prompt and compares; more gives a steadier "
                                    "signal and takes longer.",
                                    more="How many answers GRPO samples for each prompt and scores with the checks; "
                                         "each is pushed up or down by how it scored against the others. More gives a "
                                         "steadier signal and costs time in proportion. Batch size counts answers, so "
                                         "Batch size x Gradient accumulation must be a multiple of this.",
                                    minimum=2, maximum=64)
    grpo_max_completion: int = setting(128, "Longest answer (GRPO)",
                                       "The most tokens GRPO lets an answer run to; a longer one is cut there.",
                                       more="The most tokens GRPO lets an answer run to; a longer one is cut there (and"
                                            " a check such as valid JSON then usually fails it). Time and memory grow "
                                            "with it.", minimum=8, maximum=8192)
    grpo_beta: float = setting(0.0, "KL beta (GRPO)",
                               "How strongly GRPO holds the model near where it started; 0 (the default) needs no "
                               "reference model.",
                               more="How strongly GRPO holds the model near where it started (a KL penalty): 0, TRL's "
                                    "default (as in DAPO and Dr. GRPO), needs no reference model; 0.01-0.05 when "
                                    "answers drift into odd text.", minimum=0.0, maximum=10.0, step=0.01)
    grpo_temperature: float = setting(1.0, "Sampling temperature (GRPO)",
                                      "How varied the sampled answers are; too low teaches nothing, since GRPO learns "
                                      "only from answers that score differently.",
                                      more="How varied the sampled answers are. GRPO learns only from prompts whose "
                                           "answers score differently, so too low a temperature teaches nothing.",
                                      minimum=0.05, maximum=2.0, step=0.05)
    devices: int = setting(1, "GPUs",
                           "How many GPUs to train on, one process each; 0 uses every GPU of this machine.",
                           more="Processes to train on, one per GPU; 0 = every GPU of this machine. Above 1 the run is "
                                "launched through accelerate (each GPU takes Batch size rows per step, so the effective"
                                " batch grows with it). Without GPUs, N CPU processes (for testing the multi-process "
                                "path).",
                           minimum=0, maximum=64)
    distributed: str = setting("ddp", "Multi-GPU strategy",
                               "ddp copies the model to each GPU (fastest, when it fits one); fsdp splits it across "
                               "them (untested yet).",
                               more="ddp: each GPU holds the whole 4-bit model and a share of the batches (models that "
                                    "fit one GPU; fastest). fsdp: the 4-bit weights are sharded across the GPUs (models"
                                    " too big for one; built as peft's FSDP-QLoRA example, but untested: it has not run"
                                    " on GPUs yet). Used only when GPUs is above 1.", choices=("ddp", "fsdp"))

    def __post_init__(self) -> None:
        if isinstance(self.levers, str):
            self.levers = [m.strip() for m in self.levers.split(",") if m.strip()]
        check_fields(self)
        problem = stages.get(self.stage).check(self)
        require(problem is None, problem or "")
        require(self.early_stopping_patience == 0 or self.eval_fraction > 0,
              "Early stopping needs held-out rows to measure the eval loss on: set Held-out fraction above 0, or "
              "set Early stopping patience to 0.")


@dataclass
class ColumnMapping:
    """Which column of the user's file holds which part of an example (empty = detect)."""
    instruction: str = setting("", "Instruction column", "Alpaca-style: the task or question.")
    input: str = setting("", "Input column", "Alpaca-style: optional extra context appended to the instruction.")
    output: str = setting("", "Output column", "Alpaca-style: the answer the model should learn to give.")
    prompt: str = setting("", "Prompt column", "Prompt/completion style: the user's text.")
    completion: str = setting("", "Completion column", "Prompt/completion style: the answer to learn.")
    messages: str = setting("", "Messages column",
                            "A list of {role, content} turns (OpenAI style) or {from, value} turns (ShareGPT style).")
    text: str = setting("", "Text column", "Plain text: the model learns to continue the whole text.")
    system: str = setting("", "System column", "Optional per-row system prompt.")

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            require(isinstance(v, str), f"{f.metadata['label']} (data.columns.{f.name}) must be a column name, not "
                                        f"{shape(v)}.")

    def used(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass
class DataSettings:
    path: str = setting("", "Dataset file", "A .csv, .json, .jsonl or .parquet file with one example per row.")
    format: str = setting("auto", "Data format",
                          "How rows are read: alpaca (instruction/input/output), messages (OpenAI), sharegpt "
                          "(conversations from/value), prompt_completion, text; 'auto' detects it from the columns.",
                          choices=DATA_FORMATS)
    columns: ColumnMapping = field(default_factory=ColumnMapping, metadata={
        "label": "Column mapping", "help": "Override which column holds which part; empty fields are detected."})
    system_prompt: str = setting("", "System prompt",
                                 "Added as the system turn of every example that has none (and used in Chat).")
    skip_invalid: bool = setting(True, "Skip bad rows",
                                 "Skip rows with problems (and count them) instead of refusing the whole file.")

    def __post_init__(self) -> None:
        if isinstance(self.columns, dict):
            unknown = set(self.columns) - {f.name for f in fields(ColumnMapping)}
            require(not unknown, f"Unknown column role(s) {names(unknown)}: use "
                               f"{', '.join(f.name for f in fields(ColumnMapping))}.")
            self.columns = ColumnMapping(**self.columns)
        require(isinstance(self.path, str), "Dataset file must be a path.")
        check_fields(self)


@dataclass
class GenSettings:
    system_prompt: str = setting("", "System prompt",
                                 "Sent as the system turn. Filled with the run's own system prompt.")
    temperature: float = setting(0.7, "Temperature",
                                 "0 = always the most likely token (deterministic); higher = more varied.",
                                 minimum=0.0, maximum=2.0, step=0.05, widget="slider", hint="0 means greedy")
    top_p: float = setting(0.9, "Top-p", "Sample only from the most likely tokens that add up to this probability.",
                           minimum=0.05, maximum=1.0, step=0.05, widget="slider")
    max_new_tokens: int = setting(128, "Max new tokens", "Longest answer, in tokens.",
                                  minimum=1, maximum=2048, step=1, widget="slider")
    # the same seed gives both panes the same random draws, so they differ only by the adapter
    seed: int = setting(0, "Seed", "Both panes draw the same random numbers, so they differ only by the adapter.",
                        minimum=0, maximum=2**31 - 1)

    def __post_init__(self) -> None:
        if self.system_prompt is None:
            self.system_prompt = ""
        check_fields(self)
