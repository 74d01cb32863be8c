"""Presets: the few fields each starting point changes; everything else keeps its default."""
from __future__ import annotations

from .fields import require
from .run import RunConfig

PRESETS: dict[str, dict] = {
    "quick": {  # a few minutes on a laptop CPU with the demo model (no checkpointing: it fits, and runs ~30% faster)
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"learning_rate": 1e-3, "max_steps": 30, "batch_size": 4, "max_length": 256,
                  "warmup_ratio": 0.05, "save_steps": 10, "eval_steps": 10, "logging_steps": 1},
    },
    "balanced": {
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        # checkpointing on, as in every reference recipe (TRL's SFTConfig default, Axolotl, LLaMA-Factory, Unsloth):
        # Llama-3.1-8B here is estimated at 15.5 GB with it and 36.4 GB without (studio.memory): a 24 GB card or none
        "train": {"learning_rate": 2e-4, "epochs": 1.0, "max_steps": 0, "batch_size": 4, "grad_accum": 2,
                  "max_length": 512, "save_steps": 50, "eval_steps": 50, "gradient_checkpointing": True},
    },
    "quality": {
        "lora": {"r": 32, "alpha": 64, "dropout": 0.05},
        # Llama-3.1-8B: 21.8 GB with checkpointing, 63.7 GB without (a 4090 only with it; no A100-40GB without)
        "train": {"learning_rate": 1e-4, "epochs": 3.0, "max_steps": 0, "batch_size": 4, "grad_accum": 4,
                  "max_length": 1024, "save_steps": 100, "eval_steps": 100, "gradient_checkpointing": True},
    },
    # GRPO on the run's checks (the Data tab's Checks panel); Batch size counts answers: 2 prompts x 4 answers
    "grpo_quick": {  # the demo model on a 2-core CPU: 13.7 s/step, 3.7 GB peak RSS (bench/RESULTS.md, issue 19)
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"stage": "grpo", "learning_rate": 3e-4, "max_steps": 60, "batch_size": 8, "grad_accum": 1,
                  "max_length": 256, "grpo_generations": 4, "grpo_max_completion": 64, "grpo_beta": 0.0,
                  "grpo_temperature": 1.0, "warmup_ratio": 0.0, "save_steps": 10, "logging_steps": 1},
    },
    "grpo_gpu": {  # a 7-8B model on a 24 GB GPU: 2 prompts x 8 answers per step, checkpointing on
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "train": {"stage": "grpo", "learning_rate": 2e-5, "max_steps": 300, "batch_size": 8, "grad_accum": 2,
                  "max_length": 512, "grpo_generations": 8, "grpo_max_completion": 256, "grpo_beta": 0.0,
                  "grpo_temperature": 1.0, "gradient_checkpointing": True, "warmup_ratio": 0.03,
                  "save_steps": 50, "logging_steps": 1},
    },
}
PRESET_LABELS = {"quick": "Quick try (CPU, minutes)", "balanced": "Balanced", "quality": "Quality (GPU)",
                 "grpo_quick": "Checks, GRPO: quick try (CPU)", "grpo_gpu": "Checks, GRPO: 24 GB GPU"}
# What each preset is for, shown with the preset picker; a value far from a field's own advice says why here.
PRESET_NOTES = {
    # issue 23's walk: one short CPU run on a 30-row CSV ended at eval loss 2.04 with 1e-3 and 3.35 with 2e-4
    "quick": "30 steps at learning rate 1e-3, 5x the QLoRA paper's 2e-4, since so few steps at 2e-4 barely move the "
             "loss; for a longer run take Balanced (2e-4).",
    "balanced": "one epoch at the QLoRA paper's learning rate (2e-4), with gradient checkpointing to fit a 24 GB card.",
    "quality": "three epochs at 1e-4 with rank 32 and longer rows, for a GPU.",
    "grpo_quick": "60 GRPO steps on the run's checks with the demo model, for a CPU.",
    "grpo_gpu": "300 GRPO steps on the run's checks for a 7-8B model on a 24 GB GPU.",
}


def preset(name: str, **sections: dict) -> RunConfig:
    require(name in PRESETS, f"Preset '{name}' is not known: use one of {', '.join(PRESETS)}.")
    cfg = RunConfig().replace(**PRESETS[name])
    return cfg.replace(**sections) if sections else cfg
