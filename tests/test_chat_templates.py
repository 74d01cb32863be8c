"""model.chat_template: the named templates render, the assistant mask finds exactly each answer under them, the
Data tab's preflight counts the rows it finds (and Start refuses 0%), and the template travels into the exported
adapter's tokenizer and the Ollama Modelfile (a Go TEMPLATE for ChatML, Llama 3, Gemma, Mistral)."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from studio.config import RunConfig
from studio.config.sections import CHAT_TEMPLATES
from studio.data import tokens
from studio.models import load_tokenizer
from studio.models.templates import TEMPLATES, end_of_turn
from tests.helpers import sample_head

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."}, {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "Six, matey."}]
# The markers each family's own tokenizer has as special tokens (the demo tokenizer has only ChatML's).
MARKERS = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>", "<end_of_turn>", "<|end|>",
           "<|system|>", "<|user|>", "<|assistant|>", "<|im_sep|>"]
GO_FAMILIES = {"chatml", "llama3", "gemma", "mistral"}
# A template that never writes the assistant's turns: the mismatch that masks every label (Unsloth #11321).
DROPS_ANSWERS = ("{% for m in messages %}{% if m['role'] != 'assistant' %}<|im_start|>{{ m['role'] }}\n"
                 "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}")


def masked_runs(ids: list[int], mask: list[int], tok) -> list[str]:
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


@pytest.fixture(scope="module")
def family_tok_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model's tokenizer with the named families' turn markers added as special tokens, as each family's
    own tokenizer has them (so a marker is one token and the mask's edge falls between tokens)."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    out = tmp_path_factory.mktemp("family-tok")
    tok.save_pretrained(out)
    return out


def test_config_takes_names_and_jinja_files_and_names_the_field(tmp_path):
    from studio.config import ModelSettings
    assert set(CHAT_TEMPLATES) == {"auto", *TEMPLATES}
    assert ModelSettings().chat_template == "auto" and ModelSettings(chat_template=None).chat_template == "auto"
    assert ModelSettings(chat_template=" llama3 ").chat_template == "llama3"
    good = tmp_path / "mine.jinja"
    good.write_text(DROPS_ANSWERS, encoding="utf-8")
    assert ModelSettings(chat_template=str(good)).chat_template == str(good)
    (tmp_path / "mine.txt").write_text("x", encoding="utf-8")
    for bad in ("llama-3", str(tmp_path / "mine.txt"), str(tmp_path / "gone.jinja"), str(tmp_path)):
        with pytest.raises(ValueError, match=r"model\.chat_template.*\.jinja"):
            ModelSettings(chat_template=bad)
    cfg = RunConfig(model={"chat_template": "gemma"})
    assert RunConfig.from_yaml(cfg.to_yaml()).model.chat_template == "gemma"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_named_template_renders_and_mask_is_exactly_the_answers(name, family_tok_dir):
    tok = load_tokenizer(family_tok_dir, chat_template=name)
    assert tok.chat_template == TEMPLATES[name].jinja
    text = tokens.render_chat(tok, CHAT)[0]
    assert all(m["content"] in text for m in CHAT)  # system included (folded into the first turn where needed)
    assert TEMPLATES[name].turn_end in tokens.TURN_ENDS or not TEMPLATES[name].turn_end
    ids, mask, unmarked = tokens._tokenize_full(CHAT, tok)
    end = end_of_turn(tok, name)
    assert unmarked == [] and masked_runs(ids, mask, tok) == [f"It is 4.{end}", f"Six, matey.{end}"]
    # the generation prompt is where the answer starts: training and chat agree on the format
    prompt = tokens.render_chat(tok, CHAT[:4], add_generation_prompt=True)[0]
    assert text.startswith(prompt) and text[len(prompt):].startswith("Six, matey.")


@pytest.mark.parametrize("name", ["llama3", "gemma", "phi3"])
def test_mask_finds_answers_when_the_markers_are_not_special_tokens(name, demo_model_dir):
    """A base model given a family's template without its tokens: the answer is still found and its closer learnt."""
    tok = load_tokenizer(demo_model_dir, chat_template=name)
    ids, mask, unmarked = tokens._tokenize_full(CHAT, tok)
    runs = masked_runs(ids, mask, tok)
    assert unmarked == [] and len(runs) >= 2
    assert runs[0].startswith("It is 4." + TEMPLATES[name].turn_end) and "2+2" not in "".join(runs)


def test_auto_keeps_the_tokenizers_own_and_gives_chatml_to_none(demo_model_dir):
    from studio.models import ensure_chat_template
    from studio.models.templates import CHATML_JINJA
    own = load_tokenizer(demo_model_dir)
    assert own.chat_template and own.chat_template != CHATML_JINJA  # SmolLM2's own (with its default system)
    own.chat_template = None
    assert ensure_chat_template(own, "auto").chat_template == CHATML_JINJA


def test_preflight_counts_rows_whose_answer_is_found(tmp_path, demo_model_dir):
    from studio.ui.data.view import preflight_md
    jinja = tmp_path / "drops.jinja"
    jinja.write_text(DROPS_ANSWERS, encoding="utf-8")
    tok = load_tokenizer(demo_model_dir, chat_template=str(jinja))
    good = load_tokenizer(demo_model_dir, chat_template="llama3")
    examples = [CHAT, CHAT[:3]]
    stats = tokens.token_stats(examples, good, 512, rows=[2, 7])
    assert (stats.n_found, stats.missed_rows, stats.pct_found) == (2, [], 100.0)
    assert "✓" in preflight_md(stats, "llama3")
    stats = tokens.token_stats(examples, tok, 512, rows=[2, 7])
    assert (stats.n_found, stats.missed_rows) == (0, [2, 7]) and "Start refuses" in preflight_md(stats, str(jinja))
    # one row whose answer the template rewrites (an answer with spaces around it, trimmed by this template)
    trims = tmp_path / "trims.jinja"
    trims.write_text(TEMPLATES["chatml"].jinja.replace("message['content']", "message['content'] | trim"),
                     encoding="utf-8")
    tok = load_tokenizer(demo_model_dir, chat_template=str(trims))
    padded = [CHAT[1], {"role": "assistant", "content": "  padded  "}]
    stats = tokens.token_stats([CHAT, padded], tok, 512, rows=[3, 9])
    md = preflight_md(stats, str(trims))
    assert (stats.n_found, stats.missed_rows) == (1, [9]) and "(50%)" in md and "rows 9" in md


def test_data_tab_renders_with_the_chosen_template_and_start_refuses_zero(tmp_path, demo_model_dir):
    from studio.ui.data.handlers import inspect, template_refusal
    from studio.ui.data.view import TRAINED
    data = sample_head(12, tmp_path / "d.jsonl")
    view = inspect(str(data), model_source=str(demo_model_dir), chat_template="llama3")
    shown = "".join(t for t, _ in view.example)
    assert "<|start_header_id|>assistant<|end_header_id|>" in shown
    assert any(label == TRAINED and "<|eot_id|>" in t for t, label in view.example)
    assert "| `llama3` | 12 | 12 (100%) |" in view.preflight
    jinja = tmp_path / "drops.jinja"
    jinja.write_text(DROPS_ANSWERS, encoding="utf-8")
    view = inspect(str(data), model_source=str(demo_model_dir), chat_template=str(jinja))
    assert "0 (0%)" in view.preflight
    bad = inspect(str(data), model_source=str(demo_model_dir), chat_template="nope.txt")
    assert "model.chat_template" in bad.token_note and not bad.preflight
    cfg = RunConfig(model={"source": str(demo_model_dir), "chat_template": str(jinja)},
                    data={"path": str(data), "format": view.format, "columns": view.config["columns"]})
    msg = template_refusal(cfg)
    assert msg and "model.chat_template" in msg and "none of the 12 examples" in msg and "\n" not in msg
    assert template_refusal(cfg.replace(model={"chat_template": "gemma"})) is None


@pytest.fixture(scope="module")
def adapter_weights(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA adapter of the tiny model (untrained: export copies it, so training it would prove nothing here)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    out = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_travels_into_the_zip_and_the_modelfile(name, tmp_path, tiny_model_dir, adapter_weights):
    """A run folder as the trainer leaves it (the tokenizer saved with the adapter): the zip's tokenizer renders the
    chosen template, and its Modelfile writes the family's Go template, or none for formats Ollama has no known one."""
    from transformers import AutoTokenizer

    from studio.config import GenSettings
    from studio.export.adapter import export_adapter_zip
    from studio.export.gguf import modelfile, template_family
    from studio.export.gguf.gotemplates import FAMILIES, PROBE
    run = tmp_path / "run"
    shutil.copytree(adapter_weights, run / "adapter")
    load_tokenizer(tiny_model_dir, chat_template=name).save_pretrained(run / "adapter")
    RunConfig(name="tmpl", model={"source": str(tiny_model_dir), "chat_template": name}).save(run / "config.yaml")
    with zipfile.ZipFile(export_adapter_zip(run)) as zf:
        zf.extractall(tmp_path / "unzipped")
    tok = AutoTokenizer.from_pretrained(tmp_path / "unzipped")
    assert tok.chat_template == TEMPLATES[name].jinja
    family, _ = template_family(tok)
    mf = modelfile("./m.gguf", tok, RunConfig.load(run / "config.yaml"), GenSettings())
    if name in GO_FAMILIES:
        fam = next(f for f in FAMILIES if f.name == name)
        assert family == name and f'TEMPLATE """{fam.text(tok.eos_token)}"""' in mf
        assert all(f'PARAMETER stop "{s}"' in mf for s in fam.stops)
        # both ways: the Jinja render (less the BOS llama.cpp adds) is what the Go template writes for the probe
        jinja = tokens.render_chat(tok, PROBE, add_generation_prompt=True)[0]
        assert jinja.removeprefix(tok.bos_token if name in ("llama3", "gemma", "mistral") else "") == \
            fam.mirror(PROBE, tok.eos_token)
    else:
        assert family is None and "TEMPLATE" not in mf.replace("# No TEMPLATE", "")


def test_a_runs_jinja_template_is_its_own_copy(tmp_path):
    """The user's .jinja file may move or go: the run keeps a copy and its config names that copy."""
    from studio import runs
    from studio.config import RunConfig
    from studio.models.load import CHATML_JINJA
    from tests.helpers import SAMPLE_JSONL
    mine = tmp_path / "mine.jinja"
    mine.write_text(CHATML_JINJA, encoding="utf-8")
    root = tmp_path / "runs"
    run = runs.create_run(RunConfig().replace(data={"path": str(SAMPLE_JSONL)}, model={"chat_template": str(mine)}),
                          root)
    mine.unlink()
    cfg = RunConfig.load(run / "config.yaml")  # still loads
    assert Path(cfg.model.chat_template).parent == run and Path(cfg.model.chat_template).read_text() == CHATML_JINJA
