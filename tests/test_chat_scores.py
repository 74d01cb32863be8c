"""studio.chat's short-answer scores (SQuAD's exact match and token F1) and the closeness summary, on hand-made
strings with exact expected values: no model needed."""
from __future__ import annotations

import pytest

from studio.chat import (SHORT_REFERENCE_WORDS, closeness_summary, closer, exact_match, is_short, normalize_answer,
                         token_f1)


def test_normalize_answer_the_squad_way():
    assert normalize_answer("  The  Eiffel\tTower!\n") == "eiffel tower"
    assert normalize_answer("An apple, a pear; THE end.") == "apple pear end"
    assert normalize_answer("“Paris”—yes…") == "paris yes"  # Unicode punctuation too
    assert normalize_answer("theory of another anthem") == "theory of another anthem"  # articles as words only
    assert normalize_answer("U.S.A.") == "u s"  # punctuation becomes a space; the 'a' left is an article
    assert normalize_answer("") == "" and normalize_answer(None) == ""


def test_exact_match():
    assert exact_match("The Eiffel Tower.", "eiffel   tower") == 1.0
    assert exact_match("Eiffel Tower, Paris", "Eiffel Tower") == 0.0
    assert exact_match("", "the") == 1.0  # both empty once the article is gone


@pytest.mark.parametrize("pred, ref, f1", [
    ("The cat sat on the mat.", "a cat sat", 2 / 3),       # 2 shared of 4 predicted, 2 of 2 referenced
    ("cat sat", "The cat sat on the mat.", 2 / 3),         # symmetric
    ("paris paris paris", "paris", 0.5),                   # a word counts at most as often as in the reference
    ("sat cat", "cat sat", 1.0),                           # a bag of words: order is free
    ("Arr, 42 doubloons!", "42 pieces of eight", 2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4)),
    ("nothing alike", "totally different", 0.0),
    ("", "", 1.0),
    ("", "paris", 0.0),
    ("paris", "", 0.0),
])
def test_token_f1_exact_values(pred, ref, f1):
    assert token_f1(pred, ref) == pytest.approx(f1, abs=1e-12)


def test_short_reference_rule_and_closer():
    assert SHORT_REFERENCE_WORDS == 64
    assert is_short(" ".join(["w"] * 64)) and not is_short(" ".join(["w"] * 65)) and is_short("")
    assert closer("base", "tuned", 0.2, 0.5) == "tuned"
    assert closer("base", "tuned", 0.5, 0.2) == "base"
    assert closer("base", "tuned", 1 / 3, 1 / 3) == "tie"


def test_closeness_summary():
    assert closeness_summary("base", "tuned", {"base": 2, "tuned": 17, "tie": 1}, 20) == \
        "tuned closer on 17 of 20 held-out prompts (base 2, tie 1)."
    assert closeness_summary("run A (checkpoint-20)", "run B (final)",
                             {"run A (checkpoint-20)": 5, "run B (final)": 3, "tie": 0}, 10) == \
        "run A (checkpoint-20) closer on 5 of 8 held-out prompts (run B (final) 3, tie 0); 2 with a reference " \
        "over 64 words not scored."
    assert closeness_summary("base", "tuned", {"base": 1, "tuned": 1, "tie": 0}, 2).startswith("tuned closer on 1 of 2")
    assert "all 3 are over 64 words" in closeness_summary("base", "tuned", {"base": 0, "tuned": 0, "tie": 0}, 3)


def test_pair_labels_tell_the_two_sides_apart(tmp_path):
    import json

    from studio.chat import adapter_label, pair_labels

    for run_id, name in (("r1", "pirate"), ("r2", "pirate"), ("r3", "parrot")):
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "run.json").write_text(json.dumps({"name": name}), encoding="utf-8")
    r1, r2, r3 = tmp_path / "r1", tmp_path / "r2", tmp_path / "r3"
    assert adapter_label(r1, "adapter") == "pirate (final)" and adapter_label(r1, "checkpoint-20") == \
        "pirate (checkpoint-20)"
    assert pair_labels((r3, "checkpoint-20"), (r1, "adapter")) == ("parrot (checkpoint-20)", "pirate (final)")
    assert pair_labels((r2, "adapter"), (r1, "adapter")) == ("pirate [r2] (final)", "pirate [r1] (final)")
    assert pair_labels((r1, "adapter"), (r1, "adapter")) == ("pirate (final) (left)", "pirate (final) (right)")
    assert adapter_label(None, str(tmp_path / "unzipped-adapter")) == "unzipped-adapter"
