import time

import pytest

from studio.config import (PRESETS, ColumnMapping, DataSettings, LoraSettings, ModelSettings, RunConfig, TrainSettings,
                           field_meta, field_names, preset)
from tests.helpers import studio_cli


def test_defaults_are_valid_and_qlora():
    cfg = RunConfig()
    assert cfg.model.quantization == "nf4" and cfg.model.double_quant
    assert cfg.lora.target_modules == ["all-linear"]


def test_yaml_round_trip_keeps_every_field(tmp_path):
    cfg = preset("quality", data={"path": "x.csv", "columns": {"instruction": "q", "output": "a"},
                                  "system_prompt": "Be brief."}, model={"source": "org/model"})
    back = RunConfig.load(cfg.save(tmp_path / "c.yaml"))
    assert back == cfg
    assert back.data.columns == ColumnMapping(instruction="q", output="a")
    assert back.lora.r == 32 and back.train.epochs == 3.0


@pytest.mark.parametrize("section,changes,needle", [
    ("lora", {"r": 0}, "LoRA rank"),
    ("lora", {"r": 8.5}, "LoRA rank"),
    ("lora", {"alpha": -1}, "LoRA alpha"),
    ("lora", {"dropout": 0.9}, "dropout"),
    ("lora", {"target_modules": []}, "Target modules"),
    ("lora", {"target_modules": ["q_proj; rm -rf"]}, "Target modules"),
    ("train", {"learning_rate": 0}, "Learning rate"),
    ("train", {"learning_rate": "fast"}, "Learning rate"),
    ("train", {"batch_size": 0}, "Batch size"),
    ("train", {"max_length": 4}, "Max sequence length"),
    ("train", {"eval_fraction": 0.9}, "Held-out fraction"),
    ("train", {"lr_scheduler": "zigzag"}, "LR schedule"),
    ("train", {"optimizer": "sgd9"}, "Optimiser"),
    ("train", {"packing": "yes"}, "Packing"),
    ("train", {"epochs": float("nan")}, "Epochs"),
    ("model", {"source": "  "}, "Base model is empty"),
    ("model", {"quantization": "int3"}, "Quantisation"),
    ("model", {"compute_dtype": "fp8"}, "Compute dtype"),
    ("data", {"format": "xml"}, "Data format"),
    ("data", {"columns": {"answer": "a"}}, "Unknown column role"),
])
def test_invalid_values_give_a_sentence_naming_the_field(section, changes, needle):
    with pytest.raises(ValueError, match=needle):
        RunConfig().replace(**{section: changes})


def test_unknown_keys_are_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ntrain:\n  learnig_rate: 0.1\n")
    with pytest.raises(ValueError, match="learnig_rate"):
        RunConfig.load(p)
    p.write_text("name: x\ntrainer: {}\n")
    with pytest.raises(ValueError, match="trainer"):
        RunConfig.load(p)
    p.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        RunConfig.load(p)
    with pytest.raises(ValueError, match="does not exist"):
        RunConfig.load(tmp_path / "missing.yaml")


def test_whole_float_becomes_int_and_csv_targets_split():
    t = TrainSettings(batch_size=8.0)
    assert t.batch_size == 8 and isinstance(t.batch_size, int)
    assert LoraSettings(target_modules="q_proj, v_proj").target_modules == ["q_proj", "v_proj"]


def test_presets_differ_and_are_valid():
    cfgs = {name: preset(name) for name in PRESETS}
    assert cfgs["quick"].train.max_steps > 0
    assert cfgs["quick"].lora.r < cfgs["balanced"].lora.r < cfgs["quality"].lora.r
    with pytest.raises(ValueError, match="Preset"):
        preset("turbo")


def test_every_field_is_documented_once():
    for section in ("model", "lora", "train", "data", "columns"):
        for name in field_names(section):
            meta = field_meta(section, name)
            assert meta["label"] and meta["help"], f"{section}.{name} lacks a label or help"
    assert field_meta("train", "batch_size")["minimum"] == 1
    assert "nf4" in field_meta("model", "quantization")["choices"]
    # the same classes are what the UI and CLI build
    assert isinstance(RunConfig().model, ModelSettings) and isinstance(RunConfig().data, DataSettings)


def test_cli_help_is_fast():
    t = time.time()
    out = studio_cli("--help")
    assert out.returncode == 0 and "train" in out.stdout
    assert time.time() - t < 2.0


def test_cli_config_preset_and_check(tmp_path):
    out = studio_cli("config", "preset", "quick", "--data", "d.jsonl", check=True).stdout
    p = tmp_path / "q.yaml"
    p.write_text(out)
    assert RunConfig.load(p).data.path == "d.jsonl"
    p.write_text("lora:\n  r: -3\n")
    res = studio_cli("config", "check", "--file", p)
    assert res.returncode == 2 and "LoRA rank" in res.stderr and "Traceback" not in res.stderr
