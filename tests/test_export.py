"""studio.export: the adapter zip reloads with peft and generates; the merged model matches base + adapter."""
from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import pytest

QUESTION = [{"role": "user", "content": "How do I boil an egg?"}]
ZIP_FILES = {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
             "chat_template.jinja", "config.yaml", "metrics.jsonl", "loss_curve.png", "README.md"}



@pytest.fixture(scope="module")
def adapter_zip(trained_run) -> Path:
    from studio.export import export_adapter_zip
    return export_adapter_zip(trained_run)


def _greedy_ids(model, ids, n=12):
    import torch
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             eos_token_id=2, pad_token_id=2)
    return out[0, ids.shape[1]:].tolist()


def test_zip_contents_and_model_card(adapter_zip, trained_run, tiny_model_dir):
    from studio.runs import final_loss

    assert adapter_zip.parent == trained_run / "exports"
    assert re.fullmatch(r"my-run-adapter-\d{8}\.zip", adapter_zip.name), adapter_zip.name
    with zipfile.ZipFile(adapter_zip) as zf:
        assert set(zf.namelist()) == ZIP_FILES
        assert zf.read("loss_curve.png")[:8] == b"\x89PNG\r\n\x1a\n"
        assert zf.read("metrics.jsonl") == (trained_run / "metrics.jsonl").read_bytes()
        assert zf.read("config.yaml") == (trained_run / "config.yaml").read_bytes()
        card = zf.read("README.md").decode("utf-8")
        cfg = json.loads(zf.read("adapter_config.json"))
    train_loss, eval_loss = final_loss(trained_run)
    assert str(tiny_model_dir) in card and cfg["base_model_name_or_path"] == str(tiny_model_dir)
    assert f"{train_loss:.4f}" in card and f"{eval_loss:.4f}" in card
    assert "PeftModel.from_pretrained" in card and "AutoPeftModelForCausalLM" in card
    assert "48 examples" in card and "| LoRA rank r / alpha / dropout | 16 / 64 / 0 |" in card


def test_loss_curve_is_drawn_once(adapter_zip, trained_run):
    from studio.export import export_adapter_zip

    png = trained_run / "exports" / "loss_curve.png"
    stamp = png.stat().st_mtime_ns
    again = export_adapter_zip(trained_run)
    assert again == adapter_zip and png.stat().st_mtime_ns == stamp


def test_zip_reloads_with_peft_and_generates(adapter_zip, trained_run, tiny_model_dir, tmp_path):
    """Unzipped anywhere, the adapter loads on the base with peft and answers like the Chat tab's Tuned pane."""
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.chat import ChatEngine, GenSettings

    out = tmp_path / "unzipped"
    with zipfile.ZipFile(adapter_zip) as zf:
        zf.extractall(out)
    tok = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out).eval()
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    got = _greedy_ids(model, ids)
    assert len(got) > 0 and tok.decode(got, skip_special_tokens=True).strip()
    with model.disable_adapter():
        assert _greedy_ids(model, ids) != got  # the adapter in the zip is trained, not a fresh init
    assert got == ChatEngine.load(trained_run, dtype="float32").generate_ids(
        QUESTION, tuned=True, settings=GenSettings(temperature=0, max_new_tokens=12))
    auto = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # base found through adapter_config.json
    assert _greedy_ids(auto, ids) == got
    # an unzipped export is itself something Chat can open (config.yaml tells it the base)
    assert ChatEngine.load(out, dtype="float32").generate_ids(QUESTION, True,
                                                              GenSettings(temperature=0, max_new_tokens=12)) == got


def test_merged_model_matches_base_plus_adapter(trained_run, tmp_path, capsys):
    """`studio export RUN --merged`: the merged folder loads without peft and greedy-decodes like base + adapter."""
    import torch
    from transformers import AutoModelForCausalLM

    from studio.chat import ChatEngine, GenSettings
    from studio.cli import main

    zip_path, merged_dir = tmp_path / "a.zip", tmp_path / "merged"
    assert main(["export", str(trained_run), "--out", str(zip_path), "--merged", "--merged-out", str(merged_dir)]) == 0
    assert capsys.readouterr().out.split() == [str(zip_path), str(merged_dir)]
    assert zipfile.is_zipfile(zip_path)
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    assert not any("lora" in k for k in merged.state_dict())
    engine = ChatEngine.load(trained_run, dtype="float32")  # exact comparison: both sides in fp32
    s = GenSettings(temperature=0, max_new_tokens=12)
    ids = engine.encode(QUESTION, s)
    assert _greedy_ids(merged, ids) == engine.generate_ids(QUESTION, tuned=True, settings=s)
    with torch.inference_mode():
        model = engine.model
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_zip_name_is_a_safe_slug(trained_run, tmp_path):
    """Names come from run.json when the UI made the run; path tricks and non-ASCII never reach the file name."""
    from studio.export import export_adapter_zip

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("checkpoints", "exports"))
    (copy / "run.json").write_text(json.dumps({"name": "../../etc/passwd é*?<>|:"}), encoding="utf-8")
    z = export_adapter_zip(copy)
    assert z.parent == copy / "exports"
    assert re.fullmatch(r"etc-passwd-adapter-\d{8}\.zip", z.name), z.name
    # --out as a folder keeps the safe name; as a .zip path it is used as given
    d = export_adapter_zip(copy, tmp_path / "outdir")
    assert d.parent == tmp_path / "outdir" and d.name == z.name
    (copy / "run.json").write_text(json.dumps({"name": "é*?"}), encoding="utf-8")
    assert re.fullmatch(r"run-adapter-\d{8}\.zip", export_adapter_zip(copy).name)


def test_run_without_adapter_is_refused(trained_run, tmp_path, capsys):
    from studio.cli import main
    from studio.export import export_adapter_zip, export_merged

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(trained_run / "config.yaml", fresh / "config.yaml")
    with pytest.raises(ValueError, match="has no adapter yet: finish or stop the run first"):
        export_adapter_zip(fresh)
    with pytest.raises(ValueError, match="finish or stop the run first"):
        export_merged(fresh)
    with pytest.raises(ValueError, match="not a run folder"):
        export_adapter_zip(tmp_path / "nowhere")
    assert main(["export", str(fresh)]) == 2
    assert "finish or stop the run first" in capsys.readouterr().err
    assert not (fresh / "exports").exists() or not any((fresh / "exports").glob("*.zip"))


@pytest.mark.train
def test_base_without_chat_template_still_exports_a_chat_ready_adapter(tiny_model_dir, small_dataset, tmp_path):
    """A base model that ships no chat template gets ChatML once, when its tokenizer is loaded; the adapter's
    tokenizer carries it, so the model card's apply_chat_template example runs on the unzipped export."""
    from transformers import AutoTokenizer

    from studio.config import preset
    from studio.export import export_adapter_zip
    from studio.train.lifecycle import run

    bare = tmp_path / "bare-base"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((bare / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tc))
    assert not AutoTokenizer.from_pretrained(bare).chat_template
    cfg = preset("quick", model={"source": str(bare)}, data={"path": str(small_dataset)},
                 train={"max_steps": 1, "eval_fraction": 0.0, "max_length": 64, "threads": 1})
    assert run(cfg, tmp_path / "run") == 0, (tmp_path / "run" / "train.log").read_text()[-2000:]
    out = tmp_path / "unzipped"
    with zipfile.ZipFile(export_adapter_zip(tmp_path / "run")) as zf:
        zf.extractall(out)
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHow do I boil an egg?<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("base", ["org/name", "/models/my: model #2", "C:\\models\\llama 3"])
def test_model_card_front_matter_is_yaml_for_any_base(base):
    """huggingface_hub writes the card's metadata: a base path with ': ' or '#' (an f-string made it invalid YAML,
    or silently cut it at the '#') reads back as itself."""
    import yaml

    from studio.export.card import front_matter
    meta = yaml.safe_load(front_matter(base))
    assert meta["base_model"] == base and meta["library_name"] == "peft" and "qlora-studio" in meta["tags"]
