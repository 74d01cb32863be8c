"""Issue 20, which model and will it fit: the picker's list (a fake Hugging Face cache in huggingface_hub's own layout,
a local folder, the demo, the shipped popular list), the fit table against the one estimator, the refusal of a model
that needs its own code, and a hub download's progress and gated refusal (a fake tqdm call sequence; no network)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from studio.config import RunConfig, preset
from studio.models import catalog, fit
from studio.models.progress import DownloadWatch
from studio.models.source import ModelError

TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
        "tie_word_embeddings": True, "max_position_embeddings": 2048, "torch_dtype": "bfloat16"}
GB = 1e9


def hf_cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], ref: str | None = "main",
                  kind: str = "models") -> Path:
    """A repo in huggingface_hub's cache layout: blobs/<sha256>, snapshots/<rev>/<file> -> ../../blobs/<sha256>,
    refs/<ref> holding <rev>. Returns the snapshot folder."""
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    rev = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for name, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / sha).write_bytes(data)
        (snap / name).symlink_to(Path("../../blobs") / sha)
    if ref:
        (repo / "refs").mkdir()
        (repo / "refs" / ref).write_text(rev)
    return snap


def _json(d) -> bytes:
    return json.dumps(d).encode()


# --- the picker's list --------------------------------------------------------------------------

def test_the_picker_lists_the_hf_cache_a_local_folder_and_the_demo(tmp_path):
    cache = tmp_path / "hub"
    weights = b"\0" * 4096
    hf_cache_repo(cache, "org/tiny-chat", {"config.json": _json(TINY), "model.safetensors": weights,
                                           "tokenizer_config.json": _json({"chat_template": "{{ messages }}"})})
    hf_cache_repo(cache, "org/tiny-base", {"config.json": _json({**TINY, "max_position_embeddings": 4096}),
                                           "tokenizer_config.json": _json({})}, ref=None)  # no refs/main
    hf_cache_repo(cache, "org/only-gguf", {"model.gguf": b"GGUF"})  # nothing the trainer can load: left out
    hf_cache_repo(cache, "org/some-data", {"config.json": _json(TINY)}, kind="datasets")  # not a model
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({**TINY, "architectures": ["MistralForCausalLM"]}))
    (local / "chat_template.jinja").write_text("{{ messages }}")

    found = catalog.on_this_machine([local], cache_dir=cache)
    by = {m.source: m for m in found}
    assert found[0].source == "demo" and found[0].where.startswith("demo")
    assert list(by) == ["demo", str(local), "org/tiny-base", "org/tiny-chat"]
    chat, base, mine = by["org/tiny-chat"], by["org/tiny-base"], by[str(local)]
    assert chat.where == "hub cache" and chat.chat_template is True and base.chat_template is False
    assert mine.where == "local folder" and mine.chat_template is True and mine.architecture == "MistralForCausalLM"
    # size on disk: huggingface_hub's own count of the repo's blobs
    assert chat.size_bytes == len(weights) + len(_json(TINY)) + len(_json({"chat_template": "{{ messages }}"}))
    assert base.context == 4096 and chat.context == 2048
    # parameters, counted as the memory estimate counts them: 2 layers of attention + MLP, tied embeddings, norms
    h, m, kv = 64, 128, 2 * 16
    layer = h * h * 2 + h * kv * 2 + 3 * h * m
    assert chat.params == 2 * layer + 1000 * h + 5 * h
    row = chat.row()
    assert row["chat template"] == "built in" and row["architecture"] == "LlamaForCausalLM"
    assert base.row()["chat template"] == "none (ChatML added)"


def test_the_popular_list_is_shipped_data_with_the_published_sizes():
    models = {m.source: m for m in catalog.popular()}
    assert len(models) == 20
    assert "written by hand from each model's published config.json" in catalog.POPULAR_FILE.read_text()
    # the published parameter counts (the model cards'), from the shapes alone: the shapes are right
    published = {"meta-llama/Llama-3.1-8B-Instruct": 8.03e9, "meta-llama/Llama-3.2-1B-Instruct": 1.24e9,
                 "Qwen/Qwen2.5-7B-Instruct": 7.62e9, "Qwen/Qwen2.5-0.5B-Instruct": 0.494e9,
                 "Qwen/Qwen3-8B": 8.19e9, "mistralai/Mistral-7B-Instruct-v0.3": 7.25e9,
                 "HuggingFaceTB/SmolLM2-135M-Instruct": 0.135e9, "HuggingFaceTB/SmolLM2-1.7B-Instruct": 1.71e9,
                 "google/gemma-3-1b-it": 1.0e9}
    for source, n in published.items():
        assert models[source].params == pytest.approx(n, rel=0.02), source
    for m in models.values():
        assert m.context and m.chat_template is True and isinstance(m.gated, bool)
        assert m.shape["hidden_size"] and m.shape["num_hidden_layers"] and m.shape["vocab_size"]
    assert models["meta-llama/Llama-3.2-3B-Instruct"].gated and not models["Qwen/Qwen3-4B"].gated
    assert models["google/gemma-3-4b-it"].shape["hidden_size"] == 2560  # multimodal: the text_config's


def test_the_forms_model_choices_come_from_the_catalog(tmp_path, monkeypatch):
    from studio.ui import settings
    cache = tmp_path / "hub"
    hf_cache_repo(cache, "org/tiny-chat", {"config.json": _json(TINY)})
    monkeypatch.setattr(catalog, "hub_cache_models", lambda cache_dir=None, _real=catalog.hub_cache_models:
                        _real(cache))
    choices = settings.model_choices()
    values = [v for _, v in choices]
    assert values[0] == "demo" and "org/tiny-chat" in values and "Qwen/Qwen3-0.6B" in values
    assert any(label.startswith("Hub (cached): org/tiny-chat") for label, _ in choices)
    assert any(label == "Popular: meta-llama/Llama-3.1-8B-Instruct (8.03B, gated)" for label, _ in choices)


def test_studio_models_list_and_fit_on_the_command_line(tmp_path):
    from tests.helpers import studio_cli
    out = studio_cli("models", "list")
    assert out.returncode == 0, out.stderr
    assert "Qwen/Qwen2.5-7B-Instruct" in out.stdout and "chat template" in out.stdout
    out = studio_cli("models", "fit", "--card", "24", "--model", "Qwen/Qwen2.5-7B-Instruct")
    assert out.returncode == 0, out.stderr
    assert "fits with checkpointing" in out.stdout and "24 GB" in out.stdout


# --- the fit table --------------------------------------------------------------------------------

def _estimate(cfg: RunConfig, shape: dict, tokens: int, ckpt: bool) -> float:
    from studio.memory import estimate
    c = cfg.replace(train={"gradient_checkpointing": ckpt, "devices": 1, "max_length": 32768})
    return estimate(c, "cuda", model_config=shape, row_tokens=tokens).total_gb * GB


def test_the_fit_table_is_the_estimators_figures_on_each_card():
    cfg = preset("balanced")
    models = {m.source: m for m in catalog.popular()}
    qwen7 = models["Qwen/Qwen2.5-7B-Instruct"]
    card = 24 * fit.GIB
    f = fit.fit(cfg, qwen7, 24)
    off = _estimate(cfg, qwen7.shape, cfg.train.max_length, False)
    on = _estimate(cfg, qwen7.shape, cfg.train.max_length, True)
    assert (f.peak_off_gb, f.peak_on_gb) == (pytest.approx(off / GB), pytest.approx(on / GB))
    assert off > card >= on and f.verdict == fit.FITS_CKPT
    # the longest max_length: it fits, 256 more does not
    assert f.max_length % fit.STEP == 0
    assert _estimate(cfg, qwen7.shape, f.max_length, True) <= card
    assert _estimate(cfg, qwen7.shape, f.max_length + fit.STEP, True) > card
    # a small model fits without checkpointing; its search stops at its own context (SmolLM2: 8192)
    small = fit.fit(cfg, models["HuggingFaceTB/SmolLM2-135M-Instruct"], 80)
    assert small.verdict == fit.FITS and small.max_length == 8192
    assert small.row()["longest max_length"] == "8192 (its context)"
    # too big even with checkpointing, at any length, on an 8 GB card
    big = fit.fit(cfg, models["google/gemma-3-12b-it"], 8)
    assert big.verdict == fit.NO_FIT and big.max_length is None
    # the table: every model on every card, in card order
    rows = fit.fit_table(cfg, list(models.values()), [8, 24])
    assert len(rows) == 40 and [r.card_gb for r in rows[:20]] == [8] * 20


def test_the_cards_are_this_gpu_or_the_common_sizes(monkeypatch):
    from studio.env import devices
    monkeypatch.setattr(devices, "gpus_present", lambda: 0)
    assert fit.cards() == [8, 12, 16, 24]
    monkeypatch.setattr(devices, "gpus_present", lambda: 1)
    monkeypatch.setattr(devices, "gpu_memory", lambda index=0: (20 * GB, int(23.99 * fit.GIB), 0))
    assert fit.cards() == [24.0]


def test_the_train_tabs_fit_table_follows_the_form(monkeypatch):
    from studio.ui import settings
    from studio.ui.train import picker
    cfg = preset("balanced").replace(model={"source": "Qwen/Qwen3-8B"}, train={"max_length": 1024})
    table, note = picker.fit_frame(settings.config_values(cfg), None, card_sizes=[12, 24])
    assert list(table.columns) == ["model", "no ckpt GB", "ckpt GB", "12 GB card", "24 GB card"]
    row = table.set_index("model").loc["Qwen/Qwen3-8B"]
    f = fit.fit(cfg, next(m for m in catalog.popular() if m.source == "Qwen/Qwen3-8B"), 24)
    assert row["24 GB card"] == f"{f.verdict}, up to {f.max_length}" and row["ckpt GB"] == round(f.peak_on_gb, 1)
    assert "rows of 1024 tokens" in note and len(table) == 20
    # the form's own estimate works before the download too: the shipped shape stands in for config.json
    from studio.memory import estimate
    shown = settings.memory_html(settings.config_values(cfg), None, device="cuda")
    shape = catalog.text_config(catalog.local_config("Qwen/Qwen3-8B"))
    assert f"{estimate(cfg, 'cuda', model_config=shape).total_gb:.2f} GB" in shown


# --- models that bring their own code -------------------------------------------------------------

def test_a_model_that_needs_its_own_code_is_refused_naming_the_field(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    custom = {**TINY, "model_type": "my_custom_lm", "architectures": ["MyCustomLM"],
              "auto_map": {"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyLM"}}
    (folder / "config.json").write_text(json.dumps(custom))
    with pytest.raises(ModelError, match=r"set model\.trust_remote_code: true") as e:
        catalog.refuse_remote_code(folder, trust=False)
    assert "auto_map in its config.json" in str(e.value)
    catalog.refuse_remote_code(folder, trust=True)  # the user said so: allowed
    # auto_map on a model transformers knows (Phi-4-mini's phi3): the built-in class loads it, no code is run
    assert catalog.remote_code_problem({**TINY, "auto_map": custom["auto_map"]}, False, "x") is None
    assert catalog.source_problem(str(folder), False) and catalog.source_problem(str(folder), True) is None
    assert catalog.folder_info(folder).row()["note"] == "needs trust_remote_code"


def test_start_and_the_estimate_refuse_it_too(tmp_path, runs_dir):
    from studio.ui import settings
    from studio.ui.train.handlers import start_from_form
    from tests.helpers import SAMPLE_JSONL
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY, "model_type": "my_custom_lm",
                                                    "auto_map": {"AutoModelForCausalLM": "modeling_my.MyLM"}}))
    values = settings.config_values(preset("quick").replace(model={"source": str(folder)}))
    run_dir, msg = start_from_form(values, {"path": str(SAMPLE_JSONL)}, runs_dir)
    assert run_dir is None and "model.trust_remote_code" in msg and not list(runs_dir.iterdir())
    assert "model.trust_remote_code" in settings.memory_html(values, {"path": str(SAMPLE_JSONL)}, device="cpu")
    # `studio train` (what Start launches) refuses it before any model loads
    from tests.helpers import studio_cli
    cfg_path = preset("quick").replace(model={"source": str(folder)}, data={"path": str(SAMPLE_JSONL)}).save(
        tmp_path / "custom.yaml")
    out = studio_cli("train", cfg_path, "--output", tmp_path / "run")
    assert out.returncode == 2 and "set model.trust_remote_code: true" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


# --- the download's progress ----------------------------------------------------------------------

def test_download_progress_from_huggingface_hubs_own_bars():
    """The call sequence snapshot_download makes on its tqdm_class (huggingface_hub 2.x): a bytes-received bar and a
    bytes-written bar created through _create_progress_bar (with a `name`), their totals grown as each file starts,
    updates from the worker threads, and thread_map's bar over the files."""
    from huggingface_hub.utils.tqdm import _create_progress_bar
    now = [100.0]
    watch = DownloadWatch(clock=lambda: now[0])
    cls = watch.tqdm_class()
    transfer = _create_progress_bar(cls=cls, log_level=30, name="huggingface_hub.snapshot_download.transfer",
                                    desc="Downloading bytes", total=0, initial=0, unit="B", unit_scale=True)
    written = _create_progress_bar(cls=cls, log_level=30, name="huggingface_hub.snapshot_download",
                                   desc="Reconstructing", total=0, initial=0, unit="B", unit_scale=True)
    files = cls(total=3, desc="Fetching 3 files")
    assert watch.state().line() == "Downloading 0 B; 0 of 3 files"
    for bar in (written, transfer):  # two files start: 800 MB and 200 MB
        bar.total = (bar.total or 0) + 1_000_000_000
    now[0] += 10
    written.update(250_000_000)
    transfer.update(200_000_000)  # fewer bytes received than written (deduplicated)
    files.update(1)
    st = watch.state()
    assert (st.done_bytes, st.total_bytes, st.files_done, st.files_total) == (250_000_000, 1_000_000_000, 1, 3)
    assert st.rate == 25_000_000 and st.eta_s == 30
    assert st.line() == "Downloading 250.0 MB of 1.0 GB (25%), 25.0 MB/s, about 30 s left; 1 of 3 files"
    written.update(750_000_000)
    files.update(2)
    watch.finished = True
    assert watch.state().line().startswith("Downloaded 1.0 GB of 1.0 GB (100%)")
    assert watch.state().eta_s is None


def test_the_train_tab_streams_the_progress_and_says_what_a_gated_model_needs(monkeypatch):
    import httpx
    from huggingface_hub.errors import GatedRepoError

    from studio.models import source
    from studio.ui.train import picker

    def fake_download(repo, tqdm_class):
        bar = tqdm_class(total=2_000_000, unit="B", desc="Reconstructing")
        bar.update(1_000_000)
        import time
        time.sleep(0.15)
        return "/cache/models--org--x/snapshots/abc"

    shown = list(picker.download_updates("org/x", run=fake_download, tick=0.05))
    assert any("1.0 MB of 2.0 MB (50%)" in s for s in shown[:-1])
    assert "Downloaded" in shown[-1] and "/cache/models--org--x/snapshots/abc" in shown[-1]

    # the real catalog.download, with huggingface_hub refusing a gated repo
    monkeypatch.setattr(source, "hub_reachable", lambda timeout=3.0: True)
    response = httpx.Response(403, request=httpx.Request("GET", "https://huggingface.co/api/models/meta-llama/x"))

    def gated(*a, **k):
        raise GatedRepoError("Access to model meta-llama/x is restricted.", response=response)

    monkeypatch.setattr("huggingface_hub.snapshot_download", gated)
    shown = list(picker.download_updates("meta-llama/x", tick=0.01))
    assert "accept its licence on https://huggingface.co/meta-llama/x" in shown[-1]
    assert "log in here (hf auth login, or set HF_TOKEN)" in shown[-1] and "Traceback" not in shown[-1]
    assert "nothing to download" in list(picker.download_updates("demo"))[-1]


def test_the_trainers_own_download_reports_its_progress_in_the_status(monkeypatch, tmp_path):
    """Start with a hub model that is not cached: the trainer downloads it, and status.json's message (what the Train
    tab shows) says how far it is, from huggingface_hub's own bars."""
    import time

    from studio.models import source
    from studio.runs import events
    from studio.train.recipe import _resolve_with_progress
    folder = tmp_path / "snap"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    def fake_snapshot(repo, allow_patterns=None, local_files_only=False, tqdm_class=None, **kw):
        if local_files_only:
            raise FileNotFoundError("not cached")
        bar = tqdm_class(total=4_000_000, unit="B", desc="Reconstructing")
        for _ in range(4):
            bar.update(1_000_000)
            time.sleep(0.08)
        return str(folder)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    monkeypatch.setattr(source, "hub_reachable", lambda timeout=3.0: True)
    said = []
    monkeypatch.setattr(events, "write_status", lambda run_dir, state, **f: said.append(f.get("message", "")))
    assert _resolve_with_progress("org/new-model", tmp_path, tick=0.05) == folder
    assert any(m.startswith("Downloading org/new-model: ") and "MB of 4.0 MB" in m for m in said), said


# --- in the browser -------------------------------------------------------------------------------

@pytest.mark.browser
def test_the_picker_and_fit_table_in_chromium(app_url, artifacts):
    """Train tab: the picker lists the demo and the popular models, a row click puts its model in the form, and the
    fit table sizes them for the form's settings (common cards: this test machine has no GPU)."""
    from playwright.sync_api import expect

    from tests.helpers import chromium_page, tab
    url, _, _ = app_url
    shots = artifacts / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    with chromium_page(url, last_shot=shots / "model-picker.png") as (page, errors):
        tab(page, "2 · Train")
        page.get_by_text("Which model, and will it fit?").click()
        table = page.locator("#model-picker-table")
        expect(table).to_contain_text("Qwen/Qwen2.5-7B-Instruct", timeout=30_000)
        expect(table).to_contain_text("SmolLM2-135M-Instruct (demo)")
        table.get_by_text("Qwen/Qwen3-0.6B", exact=True).first.click()
        # the dropdown shows the choice's label; its value is the hub id
        expect(page.locator("#model-source input")).to_have_value("Popular: Qwen/Qwen3-0.6B (596M)", timeout=10_000)
        page.locator("#model-fit-refresh").click()
        fit_table = page.locator("#model-fit-table")
        expect(fit_table).to_contain_text("24 GB card", timeout=30_000)
        expect(fit_table).to_contain_text("fits with checkpointing")
        expect(page.locator("#model-fit-note")).to_contain_text("common cards (no GPU here)")
        assert not errors, errors
