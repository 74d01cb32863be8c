"""The one typed run config: model, LoRA, training and data settings (sections), RunConfig with its YAML round trip
(run), presets, and the field metadata the UI form and the CLI read labels and help from (fields)."""
from .presets import PRESET_LABELS, PRESET_NOTES, PRESETS, preset
from .run import RunConfig, config_diff, field_meta, field_names
from .sections import (COMPUTE_DTYPES, DATA_FORMATS, DEMO_MODEL, OPTIMIZERS, QUANTIZATIONS, SCHEDULERS, ColumnMapping,
                       DataSettings, GenSettings, LoraSettings, ModelSettings, TrainSettings)

__all__ = ["RunConfig", "ModelSettings", "LoraSettings", "TrainSettings", "DataSettings", "ColumnMapping",
           "GenSettings", "PRESETS", "PRESET_LABELS", "PRESET_NOTES", "preset", "config_diff", "field_meta",
           "field_names",
           "DEMO_MODEL", "QUANTIZATIONS", "COMPUTE_DTYPES", "SCHEDULERS", "OPTIMIZERS", "DATA_FORMATS"]
