"""The real demo model: `studio train assets/configs/demo.yaml` teaches SmolLM2-135M the sample's pirate
style on this CPU, and the adapter it writes reloads with peft and generates. Slow (minutes), run in CI."""
import pytest

from studio.runs import events

# Not in the training data: the style must generalise, not be recalled.
PROMPTS = ["What is the tallest mountain in Africa?", "How do I keep bread from going stale?",
           "What does a compiler do?"]
SIGNATURE = "Arr, matey!"


def _greedy(model, tok, prompt):
    import torch
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_demo_run_learns_the_sample_style(demo_run, demo_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert events.read_status(demo_run)["state"] == "finished"
    train = events.read_metrics(demo_run).query("kind == 'train'")
    assert train.loss.iloc[-5:].mean() < 0.7 * train.loss.iloc[:3].mean(), train.loss.tolist()

    tok = AutoTokenizer.from_pretrained(demo_run / "adapter")
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32)
    torch.set_num_threads(2)
    base_answers = [_greedy(base, tok, p) for p in PROMPTS]
    tuned = PeftModel.from_pretrained(base, demo_run / "adapter")
    tuned_answers = [_greedy(tuned, tok, p) for p in PROMPTS]
    print("base:", base_answers, "\ntuned:", tuned_answers)
    assert sum(a.startswith(SIGNATURE) for a in tuned_answers) >= 2, tuned_answers
    assert not any(SIGNATURE.lower() in a.lower() for a in base_answers), base_answers
    assert all(len(a.strip()) > 10 for a in tuned_answers)
