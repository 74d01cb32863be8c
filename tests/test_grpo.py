"""The grpo stage: the run's checks as TRL's GRPO rewards, on the tiny random Llama (real SmolLM2 tokenizer) with a
4-bit base: per-check rewards in metrics.jsonl, a check that never varies named, the adapter changed and reloadable,
resume, the other cells of the data reaching the checks (compare_to), and the config's and estimate's rules."""
import json
import random

import pytest

from studio import runs
from studio.config import RunConfig
from studio.runs import ADAPTER, events
from tests.helpers import tiny_run_config

CHECKS = [{"name": "is_json", "type": "json", "required": ["answer"]},
          {"name": "right", "type": "numeric", "extract": {"json": "answer"}, "compare_to": "total"},
          {"name": "short", "type": "length", "max_chars": 80},
          {"name": "watched", "type": "contains", "any": ["kite"], "weight": 0}]


def kites(path, n=40, seed=0):
    """Word problems whose answers are JSON, with the sum in a column of its own (what compare_to reads)."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = r.randint(1, 40), r.randint(1, 40)
        rows.append({"question": f"Row {i}: {a} kites and {b} more. How many kites?",
                     "answer": json.dumps({"answer": a + b, "unit": "kites"}), "total": a + b})
    path.write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
    return path


def grpo_config(tiny_model_dir, data, **train):
    return tiny_run_config(tiny_model_dir, data).replace(
        name="grpo", checks=CHECKS,
        train={"stage": "grpo", "max_steps": 4, "batch_size": 4, "grpo_generations": 4, "grpo_max_completion": 12,
               "save_steps": 2, "eval_fraction": 0.1, "learning_rate": 1e-2, "checks_eval_rows": 0, **train})


def test_grpo_needs_a_rewarded_check_and_whole_groups():
    # a config being edited may lack its checks; a run may not start without one that is rewarded
    for checks in ([], [{"name": "a", "type": "length", "max_words": 5, "weight": 0}]):
        cfg = RunConfig(train={"stage": "grpo"}, checks=checks)
        with pytest.raises(ValueError, match="trains for the run's checks"):
            cfg.ready_to_train()
        with pytest.raises(ValueError, match="trains for the run's checks"):
            runs.create_run(cfg.replace(data={"path": "anything.csv"}))
    with pytest.raises(ValueError, match=r"multiple of Answers per prompt \(4\)"):
        RunConfig(train={"stage": "grpo", "batch_size": 6}, checks=CHECKS)
    ok = RunConfig(train={"stage": "grpo", "batch_size": 2, "grad_accum": 2}, checks=CHECKS)
    assert [c.name for c in ok.check_list()] == ["is_json", "right", "short", "watched"]
    assert RunConfig.from_yaml(ok.to_yaml()).checks == ok.checks


def test_the_estimate_counts_the_answers_grpo_samples():
    from studio.memory import estimate
    sft = RunConfig(checks=CHECKS).replace(model={"compute_dtype": "float32"})  # not the probe's: see test_memory
    grpo = sft.replace(train={"stage": "grpo", "grpo_max_completion": 256})
    a, b = estimate(sft, "cpu", row_tokens=100), estimate(grpo, "cpu", row_tokens=100)
    assert a.tokens_per_batch == 4 * 100 and b.tokens_per_batch == 4 * (100 + 256)
    assert b.breakdown["activations"] > 3 * a.breakdown["activations"]
    assert any("grpo" in n for n in b.notes)


def test_a_check_is_a_reward_function_named_after_it():
    from studio.checks import parse_checks
    from studio.train.grpo import CheckReward
    right = CheckReward(parse_checks(CHECKS)[1])
    assert right.__name__ == "right"
    rows = [json.dumps({"reference": '{"answer": 7}', "columns": {"total": 7}})] * 3
    completions = [[{"role": "assistant", "content": t}] for t in ('{"answer": 7}', '{"answer": 8}', "seven")]
    assert right(prompts=[None] * 3, completions=completions, check_row=rows, trainer_state=None) == [1.0, 0.0, 0.0]


@pytest.mark.train
def test_grpo_run_logs_each_check_and_saves_an_adapter_that_reloads(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from studio.train.lifecycle import run
    cfg = grpo_config(tiny_model_dir, kites(tmp_path / "kites.jsonl"), checks_eval_rows=2)
    out = tmp_path / "run"
    assert run(cfg, out) == 0, (out / "train.log").read_text(encoding="utf-8")[-3000:]
    assert events.read_status(out)["state"] == "finished"
    logged = events.read_metrics_events(out)
    train = [e for e in logged if e["kind"] == "train"]
    assert [e["step"] for e in train] == [1, 2, 3, 4]
    for e in train:
        for key in ("reward", "reward_std", "reward_flat", "completion_length", "check_is_json", "check_right",
                    "check_short", "check_watched"):  # a weight-0 check is logged too
            assert key in e, (key, e)
        assert 0 <= e["check_short"] <= 1 and e["completion_length"] <= 12
    # the random model never writes JSON: its check never varies, and the log says so, naming it
    flat = {e["check"] for e in logged if e["kind"] == "flat_check"}
    assert "is_json" in flat and "watched" not in flat
    assert "Check 'is_json' has scored every answer alike" in (out / "train.log").read_text(encoding="utf-8")
    # the length check varied, so the adapter moved (LoRA B starts at zero)
    weights = load_file(out / ADAPTER / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out / ADAPTER)
    ids = torch.tensor([[1, 2, 3]])
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] >= 4
    # the checks' compare_to column was kept beside the held-out rows, for the evaluation
    held = [json.loads(line) for line in (out / "eval_columns.jsonl").read_text().splitlines()]
    assert held and all("total" in c for c in held)
    # and the run was evaluated on its checks at the end: base vs tuned on 2 held-out prompts
    done = [e for e in logged if e["kind"] == "checks_eval"]
    assert len(done) == 1 and len(done[0]["summary"]) == len(CHECKS)
    result = json.loads((out / "evals" / done[0]["file"]).read_text(encoding="utf-8"))
    assert result["rows_n"] == 2 and set(result["sides"]) == {"base", "tuned"}


@pytest.mark.train
def test_grpo_resumes_from_its_checkpoint(tiny_model_dir, runs_dir, tmp_path):
    """A run created as the UI creates it (the data normalised into the run folder, its other cells beside it)
    stops at step 2 and resumes to 4 with no step repeated; with KL beta above 0 (TRL keeps a frozen copy of the
    starting adapter as the reference) the KL is logged, and only the trained adapter is saved."""
    from studio.train.lifecycle import run
    cfg = grpo_config(tiny_model_dir, kites(tmp_path / "kites.jsonl"), max_steps=2, grpo_beta=0.04)
    run_dir = runs.create_run(cfg, runs_dir)
    assert (run_dir / "columns.jsonl").is_file()
    first = RunConfig.load(run_dir / "config.yaml")
    assert run(first, run_dir) == 0, (run_dir / "train.log").read_text(encoding="utf-8")[-3000:]
    assert run(first.replace(train={"max_steps": 4}), run_dir, resume=True) == 0, \
        (run_dir / "train.log").read_text(encoding="utf-8")[-3000:]
    train = [e for e in events.read_metrics_events(run_dir) if e["kind"] == "train"]
    assert [e["step"] for e in train] == [1, 2, 3, 4], train
    assert all("kl" in e for e in train)
    saved = json.loads((run_dir / ADAPTER / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and not (run_dir / ADAPTER / "ref").exists()
    assert any(e["kind"] == "resume" and e["step"] == 2 for e in events.read_metrics_events(run_dir))


def test_the_train_tab_charts_the_reward_and_each_check(tmp_path):
    from studio.ui.train import curves
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunConfig(train={"stage": "grpo"}, checks=CHECKS).save(run_dir / "config.yaml")
    logged = [{"kind": "train", "step": s, "loss": 0.0, "reward": 0.5 * s, "reward_std": 0.2, "reward_flat": 0.0,
               "check_is_json": 0.1 * s, "check_short": 0.3} for s in (1, 2, 3)]
    fig = curves.third_chart(run_dir, logged)
    names = [t.name for t in fig.data]
    assert names[0].startswith("reward") and "check is_json" in names and "check short" in names
    assert list(next(t for t in fig.data if t.name == "check is_json").y) == pytest.approx([0.1, 0.2, 0.3])
