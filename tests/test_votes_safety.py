"""The Chat tab's own vote files survive a crash, and a preference run fails only with sentences (issue 22):
a line torn by a crash or holding NUL bytes is skipped and counted, as the Chat tab counts the votes, not a reason
to refuse the whole file; a seed of inf/nan is the ValueError append_vote promises; an adapter from another base
is named with both bases, not peft's "size mismatch"."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.helpers import tiny_run_config

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def _run_with_votes(tiny_model_dir, small_dataset, tmp_path: Path) -> Path:
    """A run folder (config.yaml and a final adapter's config) with 6 decided votes and 6 ratings, and between them
    a line torn by a crash and a line of NUL bytes in each file."""
    from studio.runs import judgements
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    tiny_run_config(tiny_model_dir, small_dataset).save(run / "config.yaml")
    for i in range(6):
        if i == 3:  # a crash mid-append, then a journal replay's zero-filled block
            for name in ("preferences.jsonl", "feedback.jsonl"):
                with open(run / name, "ab") as f:
                    f.write(b'{"prompt": [{"role": "us')
                    f.write(b"\n" + b"\x00" * 40 + b"\n")
        judgements.append_vote(run, PROMPT, f"Paris, answer {i}.", f"Lyon {i}.", "base", "tuned", "a")
        judgements.append_feedback(run, PROMPT, f"Paris {i}.", "tuned", liked=i % 2 == 0)
    return run


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_damaged_lines_in_the_studios_own_vote_files_are_skipped_and_logged(tiny_model_dir, small_dataset, tmp_path,
                                                                           caplog, stage):
    from studio import stages
    from studio.data.kinds import kind_of_file
    from studio.runs import followups, judgements
    from studio.train.datasets import log_report

    run = _run_with_votes(tiny_model_dir, small_dataset, tmp_path)
    counted = len(judgements.read_votes(run) if stage == "dpo" else judgements.read_ratings(run))
    assert counted == 6  # what the Chat tab shows
    cfg = followups.dpo_config(run) if stage == "dpo" else followups.kto_config(run)
    data_kind = stages.get(stage).data
    kind = kind_of_file(cfg.data.path)
    assert kind is not None and kind.name == data_kind  # detected as votes, not refused as "not a text file"
    report = kind.read(cfg.data)  # what the trainer's data step reads
    assert len(report.examples) == counted
    with caplog.at_level(logging.INFO, logger="studio.train"):
        log_report(kind.label, report)
    assert "2 damaged line" in caplog.text and "row 4: damaged line skipped" in caplog.text
    assert "column None" not in caplog.text


def test_a_users_own_file_with_a_torn_line_is_still_refused(tmp_path):
    """Only the studio's own files are read past a damaged line: a user's file gets the line to fix."""
    from studio.data import DataError, read_preferences
    f = tmp_path / "preferences.jsonl"  # same name, but no run folder around it
    f.write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}) + "\n{\"prompt\": \"x",
                 encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        read_preferences(f)


@pytest.mark.parametrize("seed", [float("inf"), float("-inf"), float("nan")])
def test_append_vote_refuses_a_seed_of_inf_or_nan_with_its_value_error(tmp_path, seed):
    from studio.runs import judgements
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(ValueError, match="seed must be a whole number"):
        judgements.append_vote(tmp_path, PROMPT, "a", "b", "base", "tuned", "a", seed=seed)
    with pytest.raises(ValueError, match="seed must be a whole number"):
        judgements.append_feedback(tmp_path, PROMPT, "a", "tuned", True, seed=seed)
    assert not (tmp_path / "preferences.jsonl").exists() and not (tmp_path / "feedback.jsonl").exists()


def test_start_from_an_adapter_of_another_base_names_both_bases(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from studio.train.recipe import load_start_adapter

    def tiny(width: int, name: str):
        torch.manual_seed(0)
        m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=width, intermediate_size=2 * width,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
        m.save_pretrained(tmp_path / name)
        return m

    adapter = tmp_path / "adapter"
    get_peft_model(tiny(32, "small-base"), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(adapter)
    conf = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**conf, "base_model_name_or_path": "org/small-base"}))
    with pytest.raises(ValueError) as e:
        load_start_adapter(tiny(64, "wide-base"), adapter, "org/wide-base")
    msg = str(e.value)
    assert "org/small-base" in msg and "org/wide-base" in msg and "size mismatch" not in msg
