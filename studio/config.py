"""The one typed run config: model, LoRA, training and data settings.

Every field is documented once, in its `metadata["help"]`; the CLI and the UI read labels and help
text from here (`field_help`). Each section validates itself on construction and raises ValueError
with a sentence a user can act on.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .speed import LEVERS, MEASURED

DEMO_MODEL = "demo"  # alias for the bundled SmolLM2-135M-Instruct (see studio.models)

QUANTIZATIONS = ("nf4", "none")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
OPTIMIZERS = ("auto", "adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "adamw_8bit")
DATA_FORMATS = ("auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text")


def _f(default: Any, label: str, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its label, help text, and where they apply its choices, range (minimum,
    maximum), widget step, widget ("slider") and a hint added to its error message: the one place each is
    written. The UI builds its inputs from these, and `_check` validates every section from them."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"label": label, "help": help, **kw})
    return field(default=default, metadata={"label": label, "help": help, **kw})


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check(obj: Any) -> None:
    """Type, choices and range of every documented field, from its metadata; whole floats become ints
    (a UI number box hands over 8.0). Raises ValueError with a sentence naming the field."""
    for f in fields(obj):
        meta = f.metadata
        if "label" not in meta or f.type not in _TYPES:
            continue
        v, label = getattr(obj, f.name), meta["label"]
        hint = f"; {meta['hint']}" if meta.get("hint") else ""
        kind = _TYPES[f.type]
        if kind is int:
            if _is_num(v) and math.isfinite(v) and float(v).is_integer():
                v = int(v)
            _need(_is_int(v), f"{label} must be a whole number (got {v!r}){hint}.")
        elif kind is float:
            _need(_is_num(v) and math.isfinite(v), f"{label} must be a number (got {v!r}){hint}.")
            v = float(v)
        elif kind is bool:
            _need(isinstance(v, bool), f"{label} must be true or false (got {v!r}).")
        elif kind is str:
            _need(isinstance(v, str), f"{label} must be text (got {v!r}).")
        setattr(obj, f.name, v)
        choices = meta.get("choices")
        if choices is not None and kind is not list:
            _need(v in choices, f"{label} '{v}' is not known: use one of {', '.join(choices)}.")
        elif choices is not None:
            bad = [x for x in v if x not in choices] if isinstance(v, list) else [v]
            _need(not bad, f"{label}: {', '.join(map(repr, bad))} not known: use {', '.join(choices)}.")
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if lo is not None:
            what = "a whole number from" if kind is int else "between"
            _need(lo <= v <= hi, f"{label} must be {what} {lo:g} {'to' if kind is int else 'and'} {hi:g} "
                                 f"(got {v!r}){hint}.")


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list}


@dataclass
class ModelSettings:
    source: str = _f(DEMO_MODEL, "Base model",
                     "Which model to fine-tune: 'demo' (the bundled SmolLM2-135M-Instruct), a local folder in "
                     "Hugging Face format, or a hub id such as HuggingFaceTB/SmolLM2-360M-Instruct.")
    quantization: str = _f("nf4", "Quantisation",
                           "'nf4' loads the frozen base in 4-bit NormalFloat through bitsandbytes (QLoRA): about "
                           "4x less memory for the weights. 'none' trains plain LoRA on a full-precision base.",
                           choices=QUANTIZATIONS)
    double_quant: bool = _f(True, "Double quantisation",
                            "Also quantise the 4-bit scales (saves ~0.4 bits per weight, about 3 GB on a 65B "
                            "model); no measurable quality cost.")
    compute_dtype: str = _f("auto", "Compute dtype",
                            "Precision of the matrix work, as mixed precision: LoRA weights, gradients and "
                            "optimiser states stay float32. 'auto' picks bfloat16 on GPUs that support it (else "
                            "float16), and on a CPU what a short measurement finds faster: bfloat16 where the CPU has "
                            "native bf16 (AVX512-BF16, AMX: ~4x fp32 here), float32 where it has not (AVX2 only: "
                            "bf16 is ~100x slower). The measurement and the choice are in the run's train.log.",
                            choices=COMPUTE_DTYPES)
    trust_remote_code: bool = _f(False, "Trust remote code",
                                 "Run Python code shipped with the model. Leave off unless you trust its author.")

    def __post_init__(self) -> None:
        _need(isinstance(self.source, str) and self.source.strip() != "",
              "Base model is empty: choose 'demo', a local model folder, or a hub id.")
        self.source = self.source.strip()
        _check(self)


@dataclass
class LoraSettings:
    r: int = _f(16, "LoRA rank (r)",
                "Size of the low-rank update. 8-16 suits style and format; 32-64 for new knowledge. Memory and "
                "adapter size grow linearly with r.", minimum=1, maximum=512)
    alpha: int = _f(32, "LoRA alpha",
                    "Scale of the update (effective scale = alpha / r). alpha = 2*r is the common default.",
                    minimum=1, maximum=1024, hint="2 x rank is a good start")
    dropout: float = _f(0.05, "LoRA dropout",
                        "Dropout on the LoRA input; 0.05 helps small data sets, 0 is fine above ~10k rows.",
                        minimum=0.0, maximum=0.5, step=0.01, widget="slider")
    target_modules: list = _f(["all-linear"], "Target modules",
                              "Which layers get adapters: 'all-linear' (every linear layer but the output head; "
                              "best quality per the QLoRA paper) or names such as q_proj, v_proj.")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        _need(isinstance(self.target_modules, list) and len(self.target_modules) > 0
              and all(isinstance(m, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+", m) for m in self.target_modules),
              "Target modules must be 'all-linear' or a comma-separated list of layer names such as q_proj, v_proj.")
        _check(self)


@dataclass
class TrainSettings:
    learning_rate: float = _f(2e-4, "Learning rate",
                              "Step size of the optimiser. 2e-4 is the QLoRA paper's value for small models; lower "
                              "(1e-4) for larger ones or if the loss jumps.", minimum=1e-7, maximum=1e-2, step=1e-4)
    lr_scheduler: str = _f("cosine", "LR schedule", "How the learning rate changes over the run.",
                           choices=SCHEDULERS)
    warmup_ratio: float = _f(0.03, "Warm-up fraction",
                             "Share of the steps over which the learning rate ramps up from 0.",
                             minimum=0.0, maximum=0.5, step=0.01, widget="slider")
    epochs: float = _f(1.0, "Epochs", "Passes over the training data (ignored when Max steps is above 0).",
                       minimum=0.01, maximum=100, step=0.5)
    max_steps: int = _f(0, "Max steps",
                        "Stop after this many optimiser steps; 0 means run for the number of epochs.",
                        minimum=0, maximum=1_000_000)
    batch_size: int = _f(4, "Batch size", "Rows per forward pass. Larger uses more memory.", minimum=1, maximum=512)
    grad_accum: int = _f(1, "Gradient accumulation",
                         "Forward passes per optimiser step; effective batch = batch size x this.",
                         minimum=1, maximum=512)
    max_length: int = _f(512, "Max sequence length",
                         "Longest training example in tokens; longer rows are cut at this length. Memory for "
                         "activations grows with it.", minimum=16, maximum=131072)
    packing: bool = _f(True, "Packing",
                       "Padding-free batches: the rows of each batch are laid end to end instead of padded to the "
                       "longest, with attention kept inside each row, so no compute goes to padding. A batch still "
                       "holds Batch size rows (rows are not merged into longer sequences).")
    gradient_checkpointing: bool = _f(False, "Gradient checkpointing",
                                      "Recompute activations in the backward pass: ~30-40% slower, much less "
                                      "activation memory. Turn on when a run does not fit.")
    optimizer: str = _f("auto", "Optimiser",
                        "auto: fused AdamW on CUDA (one kernel for all LoRA weights), adamw_torch on CPU (fused "
                        "measured no faster there). paged_adamw_8bit / adamw_8bit save memory on CUDA (6 instead of "
                        "16 bytes per LoRA weight; paged spills optimiser state to RAM under memory pressure).",
                        choices=OPTIMIZERS)
    weight_decay: float = _f(0.0, "Weight decay", "L2 penalty on the LoRA weights; 0 is usual for LoRA.",
                             minimum=0.0, maximum=1.0, step=0.01)
    max_grad_norm: float = _f(1.0, "Gradient clipping", "Clip the gradient norm to this (0 turns it off).",
                              minimum=0.0, maximum=100.0, step=0.1)
    seed: int = _f(42, "Seed", "Random seed for the data split, shuffling and LoRA initialisation.",
                   minimum=0, maximum=2**31 - 1)
    eval_fraction: float = _f(0.1, "Held-out fraction",
                              "Share of rows kept out of training for evaluation and side-by-side comparison.",
                              minimum=0.0, maximum=0.5, step=0.01, widget="slider")
    logging_steps: int = _f(1, "Log every N steps", "How often a point is added to the loss chart.",
                            minimum=1, maximum=10000)
    eval_steps: int = _f(0, "Evaluate every N steps",
                         "How often eval loss is measured on the held-out rows; 0 means at the end of each epoch.",
                         minimum=0, maximum=100000)
    save_steps: int = _f(50, "Checkpoint every N steps",
                         "How often a resumable checkpoint is written; stop and resume continue from the last one.",
                         minimum=1, maximum=100000)
    save_total_limit: int = _f(3, "Checkpoints kept",
                               "How many recent checkpoints to keep on disk; older ones are deleted, except the "
                               "best one (lowest eval loss), which is always kept. 0 keeps every checkpoint.",
                               minimum=0, maximum=10000)
    overfit_evals: int = _f(2, "Overfitting alert after N rises",
                            "Warn when the eval loss has risen N evaluations in a row while the train loss still "
                            "falls: the model has begun to learn its training rows by heart. The alert names the "
                            "step where eval loss was lowest, whose checkpoint is kept. 0 turns the alert off.",
                            minimum=0, maximum=1000)
    early_stopping_patience: int = _f(0, "Early stopping patience",
                                      "Stop the run when the eval loss has not improved for this many evaluations "
                                      "in a row; the best checkpoint is kept. 0 (the default) never stops early. "
                                      "Needs held-out rows.", minimum=0, maximum=1000)
    early_stopping_min_delta: float = _f(0.0, "Early stopping minimum improvement",
                                         "How much lower the eval loss must get to count as an improvement for "
                                         "early stopping (0 = any decrease).", minimum=0.0, maximum=10.0, step=0.001)
    threads: int = _f(0, "CPU threads", "Torch threads on CPU; 0 means one per physical core.",
                      minimum=0, maximum=512)
    levers: list = _f(["auto"], "Speed levers",
                      "Trainer speed-ups, each tested to compute the same loss: 'auto' uses those measured faster on "
                      "this kind of device (on the CPU: " + ", ".join(MEASURED["cpu"]) + "; on GPUs none yet); "
                      "pick names to choose, or 'none'. " + "; ".join(f"{k}: {v}" for k, v in LEVERS.items()) + ".",
                      choices=("auto", "none", *LEVERS))
    stage: str = _f("sft", "Training stage",
                    "sft: learn to answer like the examples (instruction tuning). dpo: preference tuning (Direct "
                    "Preference Optimisation) on pairs of a better and a worse answer, usually on top of an SFT "
                    "run's adapter (Start from); the data file must hold prompt/chosen/rejected pairs. kto: the "
                    "same from single answers rated good or bad (prompt/completion/label, e.g. the Chat tab's "
                    "thumbs up/down).", choices=("sft", "dpo", "kto"))
    start_from: str = _f("", "Start from",
                         "An earlier run's folder (its final adapter), one of its checkpoints (RUN/checkpoint-N) or "
                         "an adapter folder: training continues that adapter instead of a new one. For dpo it is also "
                         "the frozen reference the preference loss measures against. Empty: a new adapter.")
    dpo_beta: float = _f(0.1, "DPO / KTO beta",
                         "How far the tuned model may move from the reference: higher keeps it closer. 0.1 is the "
                         "DPO and KTO papers' value; 0.05-0.5 is the usual range.", minimum=0.001, maximum=10.0,
                         step=0.01)
    dpo_loss: str = _f("sigmoid+sft", "DPO loss",
                       "sigmoid+sft: the DPO paper's loss plus the chosen answers' language-model loss (RPO), which "
                       "keeps a small preference set from pushing the model into odd text. sigmoid: DPO alone. ipo: "
                       "bounded, for noisy preferences. hinge: SLiC's margin loss. robust: tolerates some wrongly "
                       "labelled pairs.", choices=("sigmoid+sft", "sigmoid", "ipo", "hinge", "robust"))
    devices: int = _f(1, "GPUs",
                      "Processes to train on, one per GPU; 0 = every GPU of this machine. Above 1 the run is "
                      "launched through accelerate (each GPU takes Batch size rows per step, so the effective batch "
                      "grows with it). Without GPUs, N CPU processes (for testing the multi-process path).",
                      minimum=0, maximum=64)
    distributed: str = _f("ddp", "Multi-GPU strategy",
                          "ddp: each GPU holds the whole 4-bit model and a share of the batches (models that fit "
                          "one GPU; fastest). fsdp: the 4-bit weights are sharded across the GPUs (models too big "
                          "for one). Used only when GPUs is above 1.", choices=("ddp", "fsdp"))

    def __post_init__(self) -> None:
        if isinstance(self.levers, str):
            self.levers = [m.strip() for m in self.levers.split(",") if m.strip()]
        _check(self)
        _need(self.stage != "kto" or self.batch_size >= 2,
              "KTO needs Batch size 2 or more: it estimates its reference term from the other rows of a batch.")
        _need(self.early_stopping_patience == 0 or self.eval_fraction > 0,
              "Early stopping needs held-out rows to measure the eval loss on: set Held-out fraction above 0, or "
              "set Early stopping patience to 0.")


@dataclass
class ColumnMapping:
    """Which column of the user's file holds which part of an example (empty = detect)."""
    instruction: str = _f("", "Instruction column", "Alpaca-style: the task or question.")
    input: str = _f("", "Input column", "Alpaca-style: optional extra context appended to the instruction.")
    output: str = _f("", "Output column", "Alpaca-style: the answer the model should learn to give.")
    prompt: str = _f("", "Prompt column", "Prompt/completion style: the user's text.")
    completion: str = _f("", "Completion column", "Prompt/completion style: the answer to learn.")
    messages: str = _f("", "Messages column",
                       "A list of {role, content} turns (OpenAI style) or {from, value} turns (ShareGPT style).")
    text: str = _f("", "Text column", "Plain text: the model learns to continue the whole text.")
    system: str = _f("", "System column", "Optional per-row system prompt.")

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            _need(isinstance(v, str), f"Column for '{f.name}' must be a column name (got {v!r}).")

    def used(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass
class DataSettings:
    path: str = _f("", "Dataset file", "A .csv, .json, .jsonl or .parquet file with one example per row.")
    format: str = _f("auto", "Data format",
                     "How rows are read: alpaca (instruction/input/output), messages (OpenAI), sharegpt "
                     "(conversations from/value), prompt_completion, text; 'auto' detects it from the columns.",
                     choices=DATA_FORMATS)
    columns: ColumnMapping = field(default_factory=ColumnMapping, metadata={
        "label": "Column mapping", "help": "Override which column holds which part; empty fields are detected."})
    system_prompt: str = _f("", "System prompt",
                            "Added as the system turn of every example that has none (and used in Chat).")
    skip_invalid: bool = _f(True, "Skip bad rows",
                            "Skip rows with problems (and count them) instead of refusing the whole file.")

    def __post_init__(self) -> None:
        if isinstance(self.columns, dict):
            unknown = set(self.columns) - {f.name for f in fields(ColumnMapping)}
            _need(not unknown, f"Unknown column role(s) {sorted(unknown)}: use "
                               f"{', '.join(f.name for f in fields(ColumnMapping))}.")
            self.columns = ColumnMapping(**self.columns)
        _need(isinstance(self.path, str), "Dataset file must be a path.")
        _check(self)


@dataclass
class RunConfig:
    name: str = _f("run", "Run name", "A short name for this run; used for its folder and the export file.")
    model: ModelSettings = field(default_factory=ModelSettings, metadata={"label": "Model", "help": ""})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"label": "LoRA", "help": ""})
    train: TrainSettings = field(default_factory=TrainSettings, metadata={"label": "Training", "help": ""})
    data: DataSettings = field(default_factory=DataSettings, metadata={"label": "Data", "help": ""})

    def __post_init__(self) -> None:
        _need(isinstance(self.name, str) and self.name.strip() != "", "Run name is empty: give the run a short name.")
        self.name = self.name.strip()
        for sect, cls in (("model", ModelSettings), ("lora", LoraSettings), ("train", TrainSettings),
                          ("data", DataSettings)):
            v = getattr(self, sect)
            if isinstance(v, dict):
                known = {f.name for f in fields(cls)}
                unknown = set(v) - known
                _need(not unknown, f"Unknown setting(s) {', '.join(sorted(unknown))} in section '{sect}': "
                                   f"known ones are {', '.join(sorted(known))}.")
                setattr(self, sect, cls(**v))
            else:
                _need(isinstance(v, cls), f"Section '{sect}' must be a mapping of settings.")

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """{"name": ..., "train.learning_rate": ..., ...}: every setting under its dotted name."""
        out: dict[str, Any] = {}
        for k, v in self.to_dict().items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    if isinstance(vv, dict):  # data.columns
                        out.update({f"{k}.{kk}.{c}": x for c, x in vv.items()})
                    else:
                        out[f"{k}.{kk}"] = vv
            else:
                out[k] = v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        _need(isinstance(d, dict), "A run config must be a mapping with sections model, lora, train, data.")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        _need(not unknown, f"Unknown section(s) {', '.join(sorted(unknown))}: known ones are "
                           f"{', '.join(sorted(known))}.")
        return cls(**d)

    def to_yaml(self) -> str:
        import yaml
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str) -> "RunConfig":
        import yaml
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"The config is not valid YAML: {e}") from None
        return cls.from_dict(d or {})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        _need(path.is_file(), f"Config file {path} does not exist.")
        try:
            return cls.from_yaml(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def replace(self, **sections: dict) -> "RunConfig":
        """A copy with some fields changed, e.g. cfg.replace(train={"max_steps": 5})."""
        d = self.to_dict()
        for sect, changes in sections.items():
            if isinstance(changes, dict):
                d[sect] = {**d[sect], **changes}
            else:
                d[sect] = changes
        return RunConfig.from_dict(d)


# --- presets ----------------------------------------------------------------------------------
# Only the fields a preset changes; everything else keeps its default.
PRESETS: dict[str, dict] = {
    "quick": {  # a few minutes on a laptop CPU with the demo model
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"learning_rate": 1e-3, "max_steps": 30, "batch_size": 4, "max_length": 256,
                  "warmup_ratio": 0.05, "save_steps": 10, "eval_steps": 10, "logging_steps": 1},
    },
    "balanced": {
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "train": {"learning_rate": 2e-4, "epochs": 1.0, "max_steps": 0, "batch_size": 4, "grad_accum": 2,
                  "max_length": 512, "save_steps": 50, "eval_steps": 50},
    },
    "quality": {
        "lora": {"r": 32, "alpha": 64, "dropout": 0.05},
        "train": {"learning_rate": 1e-4, "epochs": 3.0, "max_steps": 0, "batch_size": 4, "grad_accum": 4,
                  "max_length": 1024, "save_steps": 100, "eval_steps": 100},
    },
}
PRESET_LABELS = {"quick": "Quick try (CPU, minutes)", "balanced": "Balanced", "quality": "Quality (GPU)"}


def preset(name: str, **sections: dict) -> RunConfig:
    _need(name in PRESETS, f"Preset '{name}' is not known: use one of {', '.join(PRESETS)}.")
    cfg = RunConfig().replace(**PRESETS[name])
    return cfg.replace(**sections) if sections else cfg


# --- generation (the Chat tab) --------------------------------------------------------------------
@dataclass
class GenSettings:
    system_prompt: str = _f("", "System prompt",
                            "Sent as the system turn. Filled with the run's own system prompt.")
    temperature: float = _f(0.7, "Temperature",
                            "0 = always the most likely token (deterministic); higher = more varied.",
                            minimum=0.0, maximum=2.0, step=0.05, widget="slider", hint="0 means greedy")
    top_p: float = _f(0.9, "Top-p", "Sample only from the most likely tokens that add up to this probability.",
                      minimum=0.05, maximum=1.0, step=0.05, widget="slider")
    max_new_tokens: int = _f(128, "Max new tokens", "Longest answer, in tokens.",
                             minimum=1, maximum=2048, step=1, widget="slider")
    # the same seed gives both panes the same random draws, so they differ only by the adapter
    seed: int = _f(0, "Seed", "Both panes draw the same random numbers, so they differ only by the adapter.",
                   minimum=0, maximum=2**31 - 1)

    def __post_init__(self) -> None:
        if self.system_prompt is None:
            self.system_prompt = ""
        _check(self)


# --- documentation helpers (UI labels / help) -------------------------------------------------
_SECTIONS = {"model": ModelSettings, "lora": LoraSettings, "train": TrainSettings, "data": DataSettings,
             "columns": ColumnMapping, "run": RunConfig, "gen": GenSettings}


def field_meta(section: str, name: str) -> dict:
    """{'label', 'help', and 'choices'/'minimum'/'maximum' when set} for one config field."""
    for f in fields(_SECTIONS[section]):
        if f.name == name:
            return {"default": _default(f), **f.metadata}
    raise KeyError(f"{section}.{name}")


def field_names(section: str) -> list[str]:
    return [f.name for f in fields(_SECTIONS[section])]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def config_diff(configs: list[RunConfig]) -> list[str]:
    """The dotted names of the settings whose values are not the same in every config (the run name aside),
    in the config's own order."""
    flats = [c.flat() for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if k != "name" and len({repr(f.get(k)) for f in flats}) > 1]

