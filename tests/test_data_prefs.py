"""Preference pairs for the DPO stage (studio.data.pairs): every shape read into TRL's conversational pairs, every
bad row named by row and column and skipped, ties and both-bad votes counted apart, SFT data refused with the
columns it has and needs, token lengths under the real chat template, and the Data tab's branch for such files."""
from __future__ import annotations

import codecs
import json
from pathlib import Path

import pandas as pd
import pytest

from studio import data as sdata
from studio.config import DataSettings
from studio.data import DataError, is_preference_file, normalise_to, preference_token_stats, read_preferences
from studio.ui.data import handlers, view, wiring
from tests.helpers import SAMPLE_CSV, SAMPLE_JSONL


def user(c: str) -> dict:
    return {"role": "user", "content": c}


def bot(c: str) -> dict:
    return {"role": "assistant", "content": c}


def system(c: str) -> dict:
    return {"role": "system", "content": c}


def jsonl(p: Path, rows: list[dict]) -> Path:
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [user(prompt)], "chosen": [bot(chosen)], "rejected": [bot(rejected)]}


# --- shapes ---------------------------------------------------------------------------------------

def test_standard_text_pairs_from_csv(tmp_path):
    p = tmp_path / "pairs.csv"
    pd.DataFrame({"prompt": ["Capital of France?", "2 + 2?"], "chosen": ["Paris.", "4"],
                  "rejected": ["Lyon.", "5"]}).to_csv(p, index=False)
    r = read_preferences(p)
    assert r.shape == "standard" and r.n_rows == 2 and r.n_skipped == 0 and r.n_not_pairs == 0
    assert r.examples == [pair("Capital of France?", "Paris.", "Lyon."), pair("2 + 2?", "4", "5")]
    assert r.rows == [1, 2]
    assert "2 rows" in r.summary() and "2 pairs used" in r.summary()


def test_conversational_pairs_from_jsonl_keep_a_multi_turn_prompt(tmp_path):
    prompt = [system("Be brief."), user("Hi"), bot("Hello!"), user("Name a colour.")]
    p = jsonl(tmp_path / "conv.jsonl", [{"prompt": prompt, "chosen": [bot("Blue.")], "rejected": [bot("Hmm.")]}])
    r = read_preferences(p)
    assert r.shape == "conversational"
    assert r.examples == [{"prompt": prompt, "chosen": [bot("Blue.")], "rejected": [bot("Hmm.")]}]


def test_conversational_pairs_from_parquet_and_csv_cells(tmp_path):
    rows = [{"prompt": [user("Q1")], "chosen": [bot("good 1")], "rejected": [bot("bad 1")]},
            {"prompt": [user("Q2")], "chosen": [bot("good 2")], "rejected": [bot("bad 2")]}]
    pq = tmp_path / "conv.parquet"
    pd.DataFrame(rows).to_parquet(pq)  # list<struct> columns: numpy arrays of dicts when read back
    assert read_preferences(pq).examples == rows
    csv = tmp_path / "conv.csv"  # CSV cells holding the turns as JSON text
    pd.DataFrame([{k: json.dumps(v) for k, v in r.items()} for r in rows]).to_csv(csv, index=False)
    r = read_preferences(csv)
    assert r.shape == "conversational" and r.examples == rows


def test_implicit_prompt_is_the_shared_start_of_two_conversations(tmp_path):
    start = [system("You are kind."), user("Hi"), bot("Hello."), user("Help me?")]
    pq = tmp_path / "implicit.parquet"
    pd.DataFrame({"chosen": [start + [bot("Of course.")]], "rejected": [start + [bot("No.")]]}).to_parquet(pq)
    r = read_preferences(pq)
    assert r.shape == "implicit_prompt"
    assert r.examples == [{"prompt": start, "chosen": [bot("Of course.")], "rejected": [bot("No.")]}]


def test_ultrafeedback_binarized_strips_the_prompt_and_ignores_scores(tmp_path):
    q = "Write a haiku about rain."
    rows = [{"prompt": q, "prompt_id": "abc", "chosen": [user(q), bot("Soft rain on the roof")],
             "rejected": [user(q), bot("Rain is wet.")], "messages": [user(q), bot("Soft rain on the roof")],
             "score_chosen": 8.5, "score_rejected": 3.0}]
    for p in (jsonl(tmp_path / "uf.jsonl", rows), tmp_path / "uf.parquet"):
        if p.suffix == ".parquet":
            pd.DataFrame(rows).to_parquet(p)
        r = read_preferences(p)
        assert r.shape == "full_conversations", p
        assert r.examples == [pair(q, "Soft rain on the roof", "Rain is wet.")]
        assert not r.issues


@pytest.mark.parametrize("columns, expect_prompt", [
    (("question", "response_j", "response_k"), "How do I sort a list?"),          # StackExchange paired
    (("instruction", "chosen_response", "rejected_response"), "How do I sort a list?"),
    (("Prompt", "Chosen", "Rejected"), "How do I sort a list?"),                   # case does not matter
])
def test_column_synonyms(tmp_path, columns, expect_prompt):
    p = tmp_path / "syn.csv"
    pd.DataFrame({"qid": [7], columns[0]: ["How do I sort a list?"], columns[1]: ["Use sorted(xs)."],
                  columns[2]: ["You cannot."]}).to_csv(p, index=False)
    assert is_preference_file(p)
    r = read_preferences(p)
    assert r.examples == [pair(expect_prompt, "Use sorted(xs).", "You cannot.")]
    assert r.mapping == {"prompt": columns[0], "chosen": columns[1], "rejected": columns[2]}


def test_system_and_input_columns_join_the_prompt(tmp_path):
    p = jsonl(tmp_path / "orca.jsonl", [
        {"system": "You are a pirate.", "question": "Greet me.", "chosen": "Ahoy!", "rejected": "Hello."},
        {"instruction": "Translate.", "input": "bonjour", "chosen": "hello", "rejected": "goodbye"}])
    r = read_preferences(p)
    assert r.examples[0]["prompt"] == [system("You are a pirate."), user("Greet me.")]
    # LLaMA-Factory's pairs: instruction + input, as formats.py joins alpaca's
    p2 = jsonl(tmp_path / "lf.jsonl", [{"instruction": "Translate.", "input": "bonjour", "chosen": "hello",
                                        "rejected": "goodbye"}])
    assert read_preferences(p2).examples == [pair("Translate.\n\nbonjour", "hello", "goodbye")]


def test_hh_text_splits_into_turns(tmp_path):
    start = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke."
    p = jsonl(tmp_path / "hh.jsonl", [{"chosen": start + "\n\nAssistant: Why did the chicken...",
                                       "rejected": start + "\n\nAssistant: No."}])
    r = read_preferences(p)
    assert r.shape == "hh_text"
    assert r.examples == [{"prompt": [user("Hi there"), bot("Hello!"), user("Tell me a joke.")],
                           "chosen": [bot("Why did the chicken...")], "rejected": [bot("No.")]}]


def vote_row(vote: str, chosen: str | None = "x", rejected: str | None = "y", **kw) -> dict:
    row = {"prompt": [system("Be nice."), user("Hi")], "chosen": [bot(chosen)] if chosen else None,
           "rejected": [bot(rejected)] if rejected else None, "vote": vote, "models": ["run-a", "run-b"],
           "chosen_model": "run-a" if chosen else None, "rejected_model": "run-b" if rejected else None,
           "edited": False, "settings": {"temperature": 0.7}, "seed": 1, "time": 1.7e9, "source": "chat"}
    return {**row, **kw}


def test_chat_votes_count_ties_and_both_bad_apart(tmp_path):
    p = jsonl(tmp_path / "preferences.jsonl", [
        vote_row("a", "Hello, friend!", "Go away."),
        vote_row("tie", None, None),
        vote_row("both_bad", None, None),
        vote_row("b", "Edited answer.", "Meh.", edited=True, source="heldout"),
        vote_row("tie", None, None),
    ])
    assert is_preference_file(p)
    r = read_preferences(p)
    assert r.shape == "chat_votes"
    assert r.n_rows == 5 and r.n_not_pairs == 3 and r.not_pairs == {"tie": 2, "both_bad": 1}
    assert r.issues == [] and r.n_skipped == 0  # a tie is not an error
    assert r.rows == [1, 4]
    assert r.examples[0] == {"prompt": [system("Be nice."), user("Hi")], "chosen": [bot("Hello, friend!")],
                             "rejected": [bot("Go away.")]}
    s = r.summary()
    assert "2 pairs used" in s and "3 votes not a pair" in s and "2 tie" in s and "1 both-bad" in s, s


def test_chat_votes_with_no_pair_at_all_say_so(tmp_path):
    p = jsonl(tmp_path / "preferences.jsonl", [vote_row("tie", None, None), vote_row("both_bad", None, None)])
    with pytest.raises(DataError) as e:
        read_preferences(p)
    msg = str(e.value)
    assert "preferences.jsonl" in msg and "no preference pairs" in msg and "tie" in msg and "Vote A or B" in msg


def test_a_vote_for_an_answer_without_it_is_a_problem(tmp_path):
    p = jsonl(tmp_path / "preferences.jsonl", [vote_row("a"), vote_row("b", None, "y"), vote_row("maybe")])
    r = read_preferences(p)
    assert [(i.row, i.column, i.kind) for i in r.issues] == [(2, "chosen", "empty chosen"),
                                                             (3, "vote", "unknown vote")]


# --- validation -----------------------------------------------------------------------------------

GOOD = {"prompt": "Good question?", "chosen": "Good answer.", "rejected": "Worse answer."}
BAD_ROWS = [  # (row, kind, column, words in the problem)
    ({"prompt": "Q?", "chosen": "", "rejected": "No."}, "empty chosen", "chosen", "chosen is empty"),
    ({"prompt": "Q?", "chosen": "Yes.", "rejected": None}, "empty rejected", "rejected", "rejected is empty"),
    ({"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}, "same answer", "rejected", "the same answer"),
    ({"prompt": "", "chosen": "Yes.", "rejected": "No."}, "empty prompt", "prompt", "prompt is empty"),
    ({"prompt": None, "chosen": "Yes.", "rejected": "No."}, "empty prompt", "prompt", "prompt is empty"),
    ({"prompt": [user("Hi"), bot("Hello")], "chosen": "Yes.", "rejected": "No."}, "wrong roles", "prompt",
     "ends with an assistant turn"),
    ({"prompt": "Q?", "chosen": [bot("Yes."), user("and?")], "rejected": "No."}, "wrong roles", "chosen",
     "last turn is from the user"),
    ({"prompt": "Q?", "chosen": "Yes.", "rejected": [user("No.")]}, "wrong roles", "rejected",
     "starts with a user turn"),
    ({"prompt": "Q?", "chosen": {"text": "Yes."}, "rejected": "No."}, "not text", "chosen", "not text"),
    ({"prompt": "Q?", "chosen": [{"role": "assistant", "content": {"a": 1}}], "rejected": "No."}, "not text",
     "chosen", "not text"),
    ({"prompt": "Q?", "chosen": [{"role": "robot", "content": "Yes."}], "rejected": "No."}, "unknown role",
     "chosen", "robot"),
]


@pytest.mark.parametrize("bad, kind, column, words", BAD_ROWS, ids=[b[1] + f"-{i}" for i, b in enumerate(BAD_ROWS)])
def test_each_problem_names_its_row_and_column_and_skips_the_row(tmp_path, bad, kind, column, words):
    p = jsonl(tmp_path / "mixed.jsonl", [GOOD, bad, {**GOOD, "prompt": "Another?"}])
    r = read_preferences(p)
    assert r.n_used == 2 and r.n_skipped == 1 and r.rows == [1, 3]
    (issue,) = r.issues
    assert (issue.row, issue.column, issue.kind, issue.severity) == (2, column, kind, "error")
    assert words in issue.problem and issue.fix
    assert f"1 {kind}" in r.summary()
    with pytest.raises(DataError) as e:  # the same row refuses the file when bad rows are not skipped
        read_preferences(p, skip_invalid=False)
    msg = str(e.value)
    assert "mixed.jsonl" in msg and "row 2" in msg and f"column '{column}'" in msg, msg


def test_csv_rows_count_as_the_user_sees_them_and_duplicates_are_dropped(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("prompt,chosen,rejected\nQ1,good,bad\n\nQ2,,bad\nQ1,good,bad\n", encoding="utf-8")
    r = read_preferences(p)
    assert [(i.row, i.kind) for i in r.issues] == [(3, "empty chosen"), (4, "duplicate")]
    assert "row 1" in r.issues[1].problem
    with pytest.raises(DataError, match="row 3, column 'chosen'"):
        read_preferences(p, skip_invalid=False)


def test_conversations_that_share_no_start_have_no_prompt(tmp_path):
    p = jsonl(tmp_path / "implicit.jsonl", [
        {"chosen": [user("A?"), bot("yes")], "rejected": [user("B?"), bot("no")]},
        {"chosen": [user("A?"), bot("yes")], "rejected": [user("A?"), bot("no")]}])
    r = read_preferences(p)
    assert r.n_used == 1
    (issue,) = r.issues
    assert (issue.row, issue.column, issue.kind) == (1, "chosen", "missing prompt")


def test_text_answers_without_a_prompt_column_are_refused_with_the_reason(tmp_path):
    p = jsonl(tmp_path / "noprompt.jsonl", [{"chosen": "yes", "rejected": "no"}])
    with pytest.raises(DataError) as e:
        read_preferences(p)
    assert "noprompt.jsonl" in str(e.value) and "missing prompt" in str(e.value) and "prompt column" in str(e.value)


@pytest.mark.parametrize("sample, columns", [(SAMPLE_CSV, "instruction, input, output"), (SAMPLE_JSONL, "messages")])
def test_sft_data_is_refused_with_the_columns_found_and_needed(sample, columns):
    assert not is_preference_file(sample)
    with pytest.raises(DataError) as e:
        read_preferences(sample)
    msg = str(e.value)
    assert sample.name in msg and "not preference data" in msg
    assert f"its columns are {columns}," in msg and "no chosen and no rejected column" in msg, msg
    assert "prompt, chosen, rejected" in msg and "SFT" in msg, msg


def test_a_file_with_only_one_answer_column_names_the_missing_one(tmp_path):
    p = jsonl(tmp_path / "half.jsonl", [{"prompt": "Q?", "chosen": "Yes."}])
    assert not is_preference_file(p)
    with pytest.raises(DataError, match="its columns are prompt, chosen, and it has no rejected column"):
        read_preferences(p)


def test_is_preference_file_is_false_for_what_cannot_be_read(tmp_path):
    assert not is_preference_file(tmp_path / "missing.jsonl")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    assert not is_preference_file(tmp_path / "empty.csv")
    (tmp_path / "notes.txt").write_text("prompt,chosen,rejected\n", encoding="utf-8")
    assert not is_preference_file(tmp_path / "notes.txt")


def test_is_preference_file_reads_no_rows_of_a_file_that_never_names_the_answers(tmp_path, monkeypatch):
    from studio.data import answers  # is_preference_file's first rows come through answers.first_rows
    calls = []
    real = answers.iter_tables
    monkeypatch.setattr(answers, "iter_tables", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    big = tmp_path / "sft.json"  # a JSON array: iter_tables would parse all of it
    big.write_text(json.dumps([{"instruction": f"Q{i}", "output": "A"} for i in range(5000)]), encoding="utf-8")
    assert not is_preference_file(big) and not is_preference_file(SAMPLE_CSV) and calls == []
    mentions = jsonl(tmp_path / "mentions.jsonl", [{"instruction": "chosen or rejected?", "output": "chosen"}])
    assert not is_preference_file(mentions) and len(calls) == 1  # named in the text only: the columns decide
    u16 = tmp_path / "excel.csv"  # Excel's "Unicode text": UTF-16 with a BOM
    u16.write_bytes(codecs.BOM_UTF16_LE + "prompt,chosen,rejected\nQ?,yes,no\n".encode("utf-16-le"))
    assert is_preference_file(u16) and read_preferences(u16).examples == [pair("Q?", "yes", "no")]


def test_normalise_to_writes_trl_conversational_pairs_that_read_back(tmp_path):
    src = tmp_path / "se.csv"
    pd.DataFrame({"question": ["Q1", "Q2", "Q3"], "response_j": ["good 1", "good 2", ""],
                  "response_k": ["bad 1", "bad 2", "bad 3"]}).to_csv(src, index=False)
    before = src.read_bytes()
    out = tmp_path / "run" / "pairs.jsonl"
    r = normalise_to(src, out)
    assert src.read_bytes() == before  # the user's file is only read
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert lines == r.examples and len(lines) == 2 and r.n_skipped == 1
    assert all(set(x) == {"prompt", "chosen", "rejected"} for x in lines)
    back = read_preferences(out)
    assert back.shape == "conversational" and back.examples == r.examples


# --- tokens ---------------------------------------------------------------------------------------

def test_token_stats_under_the_real_chat_template(demo_model_dir):
    from studio.models import load_tokenizer
    tok = load_tokenizer(demo_model_dir)
    examples = [pair(f"Question {i}?", "A long and careful answer " * (1 + 3 * i), "No.") for i in range(4)]
    st = preference_token_stats(examples, tok, max_length=60)

    def n_tokens(msgs):
        text, _ = sdata.render_chat(tok, msgs)
        return len(tok(text, add_special_tokens=False)["input_ids"])
    assert st.chosen.lengths == [n_tokens(e["prompt"] + e["chosen"]) for e in examples]
    assert st.rejected.lengths == [n_tokens(e["prompt"] + e["rejected"]) for e in examples]
    assert st.n == 4 and all(c > r for c, r in zip(st.chosen.lengths, st.rejected.lengths))
    c, r = st.side(st.chosen), st.side(st.rejected)
    assert c["n"] == r["n"] == 4
    assert c["mean"] == pytest.approx(sum(st.chosen.lengths) / 4) and c["max"] == max(st.chosen.lengths)
    assert c["n_over"] == sum(n > 60 for n in st.chosen.lengths) >= 1 and r["n_over"] == 0
    assert st.n_over == c["n_over"] and st.pair_lengths == st.chosen.lengths


# --- the Data tab ---------------------------------------------------------------------------------

@pytest.fixture
def fresh_tab():
    for cache in (handlers._REPORTS, handlers._STATS, handlers._KINDS):
        cache.clear()


def test_data_tab_shows_a_preference_file_as_dpo_data(tmp_path, demo_model_dir, fresh_tab):
    p = jsonl(tmp_path / "preferences.jsonl", [vote_row("a", "Hello, friend!", "Go away."), vote_row("tie", None, None),
                                               vote_row("b", "Nice to meet you.", ""), vote_row("b", "Hi!", "Bye.")])
    v = handlers.inspect(str(p), model_source=str(demo_model_dir), max_length=64, example_index=2)
    assert v.ok, v.message
    assert "DPO" in v.message and "on top of an SFT run" in v.message and "not SFT data" in v.message
    assert "**2** preference pairs from 4 rows" in v.message
    assert "1 × empty rejected" in v.message and "1 × tie" in v.message, v.message
    assert list(v.issues["row"]) == [3] and list(v.issues["column"]) == ["rejected"]
    assert v.preference == {"kind": "preference", "stage": "dpo", "path": str(p), "shape": "chat_votes", "pairs": 2,
                            "skipped": 1, "not_pairs": 1}
    # what the Train tab turns into a DataSettings: no marker in it
    assert "kind" not in v.config and DataSettings(**v.config).path == str(p)
    labels = {label: text for text, label in v.example}
    assert labels[view.CHOSEN] == "Hi!" and labels[view.REJECTED] == "Bye."
    assert "Pair 2 of 2 (row 4 of the file)" in v.example_note
    assert "prompt + chosen" in v.token_note and "prompt + rejected" in v.token_note
    assert v.n_examples == 2 and v.hist["examples"].sum() == 2 and "per pair" in v.hist_label
    ups = wiring._updates(v)
    assert ups[-1] == v.preference and ups[-2] == v.config


def test_data_tab_preference_branch_goes_through_handle_and_reads_once(tmp_path, monkeypatch, fresh_tab):
    cache = tmp_path / "gradio"
    (cache / "u1").mkdir(parents=True)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    calls = []
    real = sdata.read_preferences
    monkeypatch.setattr(sdata, "read_preferences", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    up = jsonl(cache / "u1" / "pairs.jsonl", [{**GOOD, "prompt": f"Q{i}?"} for i in range(3)])
    outside = jsonl(tmp_path / "secret.jsonl", [GOOD])
    v = handlers.handle(str(outside), [], model_source="no-such-model")
    assert not v.ok and calls == []
    for i in (1, 2, 3):
        v = handlers.handle(str(up), [], model_source="no-such-model", example_index=i)
        assert v.ok and v.preference["pairs"] == 3 and "Token lengths unavailable" in v.token_note
    assert len(calls) == 1
    assert handlers.preference_state(str(up))["pairs"] == 3 and len(calls) == 1  # the tab's report, not a new read
    # a format picked by hand is SFT's business: the SFT check says what it lacks
    v = handlers.handle(str(up), [], fmt="alpaca", model_source="no-such-model")
    assert not v.ok and "output" in v.message


def test_data_tab_keeps_sft_files_on_the_sft_path(fresh_tab):
    v = handlers.inspect(str(SAMPLE_CSV), model_source="no-such-model")
    assert v.ok and v.format == "alpaca" and v.preference["kind"] == "sft"
    assert handlers.preference_state(str(SAMPLE_CSV)) == {"kind": "sft", "stage": "sft", "path": str(SAMPLE_CSV)}
    assert handlers.preference_state(None) == {}
