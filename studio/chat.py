"""Chat with a run: ONE base model in memory, the run's adapter(s) loaded on it through peft.

Tuned = the adapter on; Base = the same weights inside `with model.disable_adapter():`, so the two panes
differ only by the LoRA update and never cost a second copy of the base. Loading another run (or
checkpoint) on the same base only loads its adapter; a different base replaces the one held. Two adapters
can be compared with each other (`ChatEngine.load(..., like=engine)`) only when they share that base.

No gradio here; torch/transformers/peft are imported inside the functions that use them.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import re
import string
import threading
import unicodedata
from collections import Counter, OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import GenSettings, RunConfig
from .layout import ADAPTER, CHECKPOINTS, EVAL_SET, FINAL, resolve_adapter, run_name

# The demo's adapter (SmolLM2-135M, r=8, all-linear, fp32) is 9.8 MB: a handful is cheap, but clicking
# through every checkpoint of a long run should not grow memory without bound.
MAX_ADAPTERS = 4


# --- the one base model of this process ---------------------------------------------------------
# Module state on purpose: the point is that two chat tabs (or two browsers) share one base in memory.
# Every use of the model (load, adapter swap, generate, loss) holds _LOCK: peft's active adapter and
# disable_adapter() are properties of the shared model, so two generations must not interleave.
_LOCK = threading.Lock()  # a plain Lock: a streaming generator may be resumed on another thread


@dataclass
class _Base:
    key: tuple
    model: Any  # a peft.PeftModel once the first adapter is on it
    device: str
    adapters: "OrderedDict[str, str]" = dataclasses.field(default_factory=OrderedDict)  # name -> dir, LRU order


_BASE: _Base | None = None


def _cpu_settings(mcfg, path: Path):
    """On the CPU, chat computes in what the measured probe chose (studio.precision: bf16 where the CPU has it
    natively, fp32 on AVX2-only ones), whatever dtype the run was trained in."""
    from .models import cpu_precision
    return dataclasses.replace(mcfg, compute_dtype=cpu_precision(path).dtype)


def _free_base() -> None:
    global _BASE
    if _BASE is None:
        return
    _BASE.model = None
    _BASE = None
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def loaded_base() -> tuple | None:
    """(model path, device, dtype, quantised) of the base held in memory, or None."""
    return _BASE.key if _BASE is not None else None


def unload() -> None:
    """Drop the base model (and its adapters) from memory."""
    with _LOCK:
        _free_base()


# --- finding the adapter and the run's settings ---------------------------------------------------

def _source_name(adapter: Path, cfg: RunConfig | None) -> str:
    """The base model as the run names it: its config's model source, else the adapter's base_model_name_or_path."""
    if cfg is not None:
        return cfg.model.source
    src = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not src:
        raise ValueError(f"{adapter}: no studio config and no base_model_name_or_path in adapter_config.json, "
                         f"so the base model is unknown.")
    return src


def _base_source(adapter: Path, cfg: RunConfig | None) -> Path:
    from .models import resolve_source
    return resolve_source(_source_name(adapter, cfg))


def _local_source(source: str) -> Path | str:
    """Where resolve_source would find `source`, without downloading anything: the demo's folder, a local
    folder, a hub id's cached snapshot, else the hub id itself (not fetched yet)."""
    from .models import DEMO_MODEL, demo_dir
    source = (source or "").strip()
    if source == DEMO_MODEL:
        return demo_dir()
    p = Path(source).expanduser()
    if p.exists():
        return p
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # not cached (or not a hub id): the name is all there is to compare
        return source


def base_path(run_dir_or_adapter_dir: str | Path, checkpoint: str | None = None) -> str:
    """The base model's resolved path, as the first element of ChatEngine.load's key, read from the run's
    config without loading or downloading anything: two adapters with the same base_path share one base."""
    adapter, cfg, _ = resolve_adapter(run_dir_or_adapter_dir, checkpoint)
    return _local_key(_source_name(adapter, cfg))


def _local_key(source: str) -> str:
    src = _local_source(source)
    return str(src.resolve()) if isinstance(src, Path) else src


def threads_for_chat(runs_root: str | Path | None = None) -> int:
    """1 while a run is training, else 0 (= torch's default, one thread per core).

    On a 2-core CPU a reply at the default competes with the trainer for both cores; at one thread the
    trainer keeps a core to itself, and the reply is slower, which is the better trade while a run goes."""
    from .runs import active_run
    return 1 if active_run(runs_root) is not None else 0


# --- naming an adapter -----------------------------------------------------------------------------

def _spec(run_dir: Path | None, adapter_dir: Path) -> tuple[Path | None, str]:
    adapter_dir = Path(adapter_dir)
    if run_dir is not None:
        if adapter_dir.name == ADAPTER and adapter_dir.parent == Path(run_dir):
            return Path(run_dir), FINAL
        if adapter_dir.parent.name == CHECKPOINTS:
            return Path(run_dir), adapter_dir.name
    return None, str(adapter_dir)


def adapter_label(run_dir: str | Path | None, adapter: str, with_id: bool = False) -> str:
    """A run's adapter as the panes and the comparison name it: "<run name> (final)" or "<run name>
    (checkpoint-N)"; with_id adds the run folder's name, for two runs with the same name; an adapter outside a
    run is named by its folder."""
    if run_dir is None:
        return Path(adapter).name or str(adapter)
    run_id = f" [{Path(run_dir).name}]" if with_id else ""
    return f"{run_name(run_dir)}{run_id} ({'final' if adapter in (FINAL, '', None) else adapter})"


def pair_labels(left: tuple, right: tuple) -> tuple[str, str]:
    """Two different names for two (run folder, adapter) sides: run names, then run ids when the names are the
    same, then "(left)"/"(right)" when both sides are the very same adapter."""
    a, b = adapter_label(*left), adapter_label(*right)
    if a == b and left[0] is not None and right[0] is not None and Path(left[0]) != Path(right[0]):
        a, b = adapter_label(*left, with_id=True), adapter_label(*right, with_id=True)
    if a == b:
        a, b = f"{a} (left)", f"{b} (right)"
    return a, b


# --- the engine ---------------------------------------------------------------------------------

class ChatEngine:
    """A handle on one adapter of the shared base. Cheap: make one per run/checkpoint you chat with."""

    def __init__(self, key: tuple, adapter_dir: Path, adapter_name: str, tokenizer, cfg: RunConfig | None,
                 run_dir: Path | None, quantize: bool, threads: int | None):
        self.key = key
        self.adapter_dir = adapter_dir
        self.adapter_name = adapter_name
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.run_dir = run_dir
        self.quantize = quantize
        self.threads = threads  # torch threads while generating; 0/None = leave torch's default

    # -- loading --
    @classmethod
    def load(cls, run_dir_or_adapter_dir: str | Path, checkpoint: str | None = None, threads: int | None = None,
             quantize: bool | None = None, device: str | None = None,
             like: "ChatEngine | None" = None, dtype: str | None = None) -> "ChatEngine":
        """An engine for a run's final adapter ("adapter"), one of its checkpoints ("checkpoint-N"), or an
        adapter folder. quantize=None: the run's quantisation on CUDA; on CPU the base is loaded unquantised
        (faster than bitsandbytes' CPU 4-bit kernels, and exact) in the dtype this CPU computes fastest.

        like=engine: put this adapter on the base `engine` holds, as it holds it (device, dtype, quantisation),
        so the two can be compared; ValueError, before anything loads, when this adapter's base is another model.
        dtype: the compute dtype on the CPU instead of the probe's choice (e.g. "float32" to compare exactly)."""
        from .models import load_tokenizer, pick_device

        adapter, cfg, run_dir = resolve_adapter(run_dir_or_adapter_dir, checkpoint)
        mcfg = cfg.model if cfg is not None else RunConfig().model
        if like is not None:
            mine = _local_key(_source_name(adapter, cfg))
            if mine != like.key[0]:
                raise ValueError(
                    f"{adapter_label(*_spec(run_dir, adapter))} was trained on another base model "
                    f"({_source_name(adapter, cfg)}) than {like.label} ({like.key[0]}). Only one base model is kept "
                    f"in memory, so only adapters of the same base can be compared side by side: pick the base "
                    f"model or one of those.")
            path, device, quantize = Path(mine), like.key[1], like.quantize
            mcfg = dataclasses.replace(mcfg, compute_dtype=like.key[2])
            key = like.key
        else:
            path = _base_source(adapter, cfg)
            device = device or pick_device()
            if quantize is None:
                quantize = device == "cuda" and mcfg.quantization == "nf4"
            if device == "cpu":
                mcfg = dataclasses.replace(mcfg, compute_dtype=dtype) if dtype else _cpu_settings(mcfg, path)
            key = (str(Path(path).resolve()), device, mcfg.compute_dtype, bool(quantize))
        tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else path
        tokenizer = load_tokenizer(tok_dir, mcfg.trust_remote_code)
        engine = cls(key, adapter, "", tokenizer, cfg, run_dir, bool(quantize), threads)
        with _LOCK:
            engine._ensure(mcfg)
        return engine

    def _ensure(self, mcfg=None) -> Any:
        """The shared model with this engine's base and adapter loaded (call with _LOCK held)."""
        global _BASE
        from peft import PeftModel

        if _BASE is None or _BASE.key != self.key:
            from .models import load_model
            if mcfg is None:
                mcfg = self.cfg.model if self.cfg is not None else RunConfig().model
                if self.key[1] == "cpu":
                    mcfg = _cpu_settings(mcfg, Path(self.key[0]))
            _free_base()  # never two bases in memory: drop the old one before loading the new one
            base = load_model(Path(self.key[0]), mcfg, self.key[1], quantize=self.quantize)
            base.eval()
            _BASE = _Base(self.key, base, self.key[1])
        b = _BASE
        st = self.adapter_dir / "adapter_model.safetensors"
        # The file's mtime is in the name: a run resumed and re-saved gets its new weights, not the cached ones.
        stamp = f"{self.adapter_dir.resolve()}|{st.stat().st_mtime_ns if st.exists() else 0}"
        name = "a" + hashlib.sha1(stamp.encode()).hexdigest()[:12]
        self.adapter_name = name
        if name in b.adapters:
            b.adapters.move_to_end(name)
        else:
            if not b.adapters:  # the first adapter wraps the base in a PeftModel
                b.model = PeftModel.from_pretrained(b.model, str(self.adapter_dir), adapter_name=name,
                                                    is_trainable=False)
            else:
                b.model.load_adapter(str(self.adapter_dir), adapter_name=name, is_trainable=False)
            b.adapters[name] = str(self.adapter_dir)
            while len(b.adapters) > MAX_ADAPTERS:
                old = next(iter(b.adapters))
                b.model.set_adapter(name)  # peft refuses to delete the active adapter
                b.model.delete_adapter(old)
                del b.adapters[old]
        b.model.set_adapter(name)
        b.model.eval()
        return b.model

    @property
    def spec(self) -> tuple[Path | None, str]:
        """(run folder, adapter name: "adapter" or "checkpoint-N"); (None, folder) for an adapter outside a run."""
        return _spec(self.run_dir, self.adapter_dir)

    @property
    def label(self) -> str:
        """What this adapter is called in the panes and the comparison, e.g. "pirate (checkpoint-20)"."""
        return adapter_label(*self.spec)

    @property
    def model(self):
        """The shared PeftModel (base + adapters); `with engine.model.disable_adapter():` is the base."""
        with _LOCK:
            return self._ensure()

    def default_settings(self, **kw) -> GenSettings:
        """GenSettings with the run's system prompt (the one its training rows were given)."""
        sp = self.cfg.data.system_prompt if self.cfg is not None else ""
        return GenSettings(**{"system_prompt": sp, **kw})

    # -- prompts --
    def encode(self, messages: list[dict], settings: GenSettings | None = None):
        """input_ids (1, T) for a conversation, with the generation prompt for the assistant's next turn."""
        from .data import render_chat
        settings = settings or GenSettings()
        msgs = [{"role": m["role"], "content": _text(m.get("content"))} for m in messages
                if m.get("role") in ("system", "user", "assistant")]
        if settings.system_prompt.strip() and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": settings.system_prompt.strip()})
        text, _ = render_chat(self.tokenizer, msgs, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def _gen_kwargs(self, model, settings: GenSettings) -> dict:
        tok = self.tokenizer
        eos = model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab()
                  else None):
            if t is not None and t not in eos:
                eos.append(t)
        kw = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=eos or None,
                  pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else None))
        if settings.temperature > 0:
            # top_k=0 switches off a top-k a model's generation_config may bring: only top-p applies
            kw.update(do_sample=True, temperature=float(settings.temperature), top_p=float(settings.top_p), top_k=0)
        else:
            kw.update(do_sample=False)
        return kw

    def _generate_ids(self, input_ids, tuned: bool, settings: GenSettings, streamer=None, stop=None):
        """Call with _LOCK held. New token ids (1-D)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        model = self._ensure()
        input_ids = input_ids[:, -_max_prompt(model, settings.max_new_tokens):]
        kw = self._gen_kwargs(model, settings)
        if stop is not None:
            class _Stop(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return stop.is_set()
            kw["stopping_criteria"] = StoppingCriteriaList([_Stop()])
        dev = next(model.parameters()).device
        ids = input_ids.to(dev)
        old_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(int(self.threads))
        try:
            with (nullcontext() if tuned else model.disable_adapter()), torch.inference_mode():
                torch.manual_seed(settings.seed)  # right before generate: both panes draw the same numbers
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kw)
        finally:
            if self.threads:
                torch.set_num_threads(old_threads)
        return out[0, ids.shape[1]:].cpu()

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- public generation --
    def generate(self, messages: list[dict], tuned: bool = True, settings: GenSettings | None = None) -> str:
        """The assistant's reply to `messages` ({role, content} turns), with the adapter on (tuned) or off."""
        return self._decode(self.generate_ids(messages, tuned, settings))

    def generate_ids(self, messages: list[dict], tuned: bool = True, settings: GenSettings | None = None) -> list[int]:
        """The reply's token ids (eos included when the model stopped on its own)."""
        settings = settings or GenSettings()
        input_ids = self.encode(messages, settings)
        with _LOCK:
            return self._generate_ids(input_ids, tuned, settings).tolist()

    def stream(self, messages: list[dict], tuned: bool = True, settings: GenSettings | None = None) -> Iterator[str]:
        """Like generate(), yielding the text so far (each string extends the previous); the last is the answer."""
        from transformers import TextIteratorStreamer

        settings = settings or GenSettings()
        input_ids = self.encode(messages, settings)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        result: dict = {}

        def work():
            try:
                result["ids"] = self._generate_ids(input_ids, tuned, settings, streamer, stop)
            except BaseException as e:  # re-raised in the consumer; end() unblocks its queue read
                result["error"] = e
                streamer.end()

        worker = threading.Thread(target=work, name="studio-chat-generate", daemon=True)
        _LOCK.acquire()
        try:
            worker.start()
            text = ""
            for piece in streamer:
                if piece:
                    text += piece
                    yield text
            worker.join()
            if "error" in result:
                raise result["error"]
            final = self._decode(result["ids"])
            if final != text or not text:  # the streamer's word-wise decode can differ in rare spacing cases
                yield final
        finally:  # also on GeneratorExit: a closed stream stops generating and frees the model
            stop.set()
            if worker.ident is not None:
                worker.join()
            _LOCK.release()

    # -- loss --
    def loss(self, examples: list[list[dict]], tuned: bool, max_length: int | None = None) -> tuple[float, int]:
        """(summed NLL, number of tokens) over the assistant tokens of `examples`, as the trainer counts them."""
        import torch

        from .data import tokenize_messages
        max_length = max_length or (self.cfg.train.max_length if self.cfg is not None else 1024)
        total, count = 0.0, 0
        with _LOCK:
            model = self._ensure()
            dev = next(model.parameters()).device
            old_threads = torch.get_num_threads()
            if self.threads:
                torch.set_num_threads(int(self.threads))
            try:
                with (nullcontext() if tuned else model.disable_adapter()), torch.inference_mode():
                    for msgs in examples:
                        row = tokenize_messages(msgs, self.tokenizer, max_length)
                        ids = torch.tensor([row["input_ids"]], device=dev)
                        mask = torch.tensor(row["assistant_masks"], device=dev)
                        if ids.shape[1] < 2 or not bool(mask[1:].any()):
                            continue
                        logits = model(input_ids=ids).logits[0, :-1].float()
                        target = ids[0, 1:]
                        nll = torch.nn.functional.cross_entropy(logits, target, reduction="none")
                        keep = mask[1:].bool()
                        total += float(nll[keep].sum())
                        count += int(keep.sum())
            finally:
                if self.threads:
                    torch.set_num_threads(old_threads)
        return total, count


def _max_prompt(model, max_new_tokens: int) -> int:
    """Keep the newest prompt tokens that fit the model's context next to the answer."""
    n = getattr(model.config, "max_position_embeddings", None) or 1_000_000
    return max(16, int(n) - max_new_tokens)


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of {"type": "text", "text": ...}."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text(c) for c in content)
    return str(content)


# --- scoring short answers (SQuAD's exact match and token F1) ---------------------------------------

# A reference of up to 64 words is an answer one can match word for word (a fact, a name, a short
# sentence); a longer one has many good phrasings, where word overlap says little: only loss is compared.
SHORT_REFERENCE_WORDS = 64
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation removed (ASCII and Unicode), articles (a, an, the)
    removed, whitespace collapsed."""
    text = "".join(" " if ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P") else ch
                   for ch in (text or "").lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two are the same after normalize_answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1: the harmonic mean of precision and recall of the bag of normalised words (a word
    counts as often as it occurs in both). Two empty answers agree (1.0); one empty answer scores 0.0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_short(reference: str) -> bool:
    """Whether a reference answer is short enough (at most SHORT_REFERENCE_WORDS words) to be scored."""
    return len((reference or "").split()) <= SHORT_REFERENCE_WORDS


def closer(left: str, right: str, left_f1: float, right_f1: float) -> str:
    """The name of the side whose answer has the higher F1, or "tie"."""
    if math.isclose(left_f1, right_f1, abs_tol=1e-12):
        return "tie"
    return left if left_f1 > right_f1 else right


def closeness_summary(left: str, right: str, wins: dict, n: int) -> str:
    """E.g. "tuned closer on 17 of 20 held-out prompts (base 2, tie 1)": the side closer more often first; n is
    the number of rows compared, some of which may have a reference too long to score."""
    short = wins.get(left, 0) + wins.get(right, 0) + wins.get("tie", 0)
    if short == 0:
        return (f"No held-out reference is short enough to score word for word (all {n} are over "
                f"{SHORT_REFERENCE_WORDS} words): compare the losses.")
    lead, other = (right, left) if wins.get(right, 0) >= wins.get(left, 0) else (left, right)
    text = (f"{lead} closer on {wins.get(lead, 0)} of {short} held-out prompts ({other} {wins.get(other, 0)}, "
            f"tie {wins.get('tie', 0)})")
    if short < n:
        text += f"; {n - short} with a reference over {SHORT_REFERENCE_WORDS} words not scored"
    return text + "."


# --- held-out comparison ---------------------------------------------------------------------------

def compare_heldout(engine: ChatEngine, run_dir: str | Path | None = None, n: int = 8,
                    settings: GenSettings | None = None, progress: Callable[[float, str], None] | None = None,
                    against: "ChatEngine | str | None" = "base", labels: tuple[str, str] | None = None):
    """One side against the other on the run's held-out rows (the first n with an answer): `engine` with its
    adapter on is the right side; the left side is `against`: "base" (the same model, adapter off) or another
    ChatEngine on the same base (its adapter on). Both answer with the same settings and seed.

    Returns (DataFrame, stats). The DataFrame's columns: prompt, reference, <left>, <right> (the answers), then
    "<left> EM", "<left> F1", "<right> EM", "<right> F1" and "closer" (the side with the higher F1, or "tie"),
    blank for a reference over SHORT_REFERENCE_WORDS words. <left>/<right> are `labels`, by default "base" and
    "tuned", or the two adapters' names (pair_labels).

    stats: left, right (the labels), n, tokens, left_loss, right_loss, left_ppl, right_ppl (over the reference
    answers' tokens), short (rows scored), wins ({left: k, right: k, "tie": k}), left_em, left_f1, right_em,
    right_f1 (means over the short rows, NaN when none) and summary (closeness_summary). Against the base, also
    base_loss, tuned_loss, base_ppl, tuned_ppl (= the left and right ones)."""
    import pandas as pd

    from .data import read_jsonl
    other = None
    if isinstance(against, ChatEngine):
        if against.key != engine.key:
            raise ValueError(f"{against.label} is loaded on another base model than {engine.label}: only adapters "
                             f"of the same base can be compared.")
        other = against
        left, right = labels or pair_labels(other.spec, engine.spec)
    elif against in (None, "", "base"):
        left, right = labels or ("base", "tuned")
    else:
        raise ValueError(f"Compare against 'base' or another chat engine, not {against!r}.")
    if left == right:
        raise ValueError(f"The two sides need different names (both are '{left}').")
    run_dir = Path(run_dir) if run_dir is not None else engine.run_dir
    if run_dir is None:
        raise ValueError("This adapter is not inside a run folder, so there are no held-out rows to compare on.")
    path = Path(run_dir) / EVAL_SET
    if not path.is_file():
        raise ValueError(f"{path} does not exist: the run keeps no held-out rows. Set 'Held-out fraction' above "
                         f"0 and train again.")
    if int(n) < 1:
        raise ValueError(f"Number of held-out rows to compare must be at least 1 (got {n}).")
    examples = [m for m in read_jsonl(path) if any(t["role"] == "assistant" for t in m)][:int(n)]
    if not examples:
        raise ValueError(f"{path} has no held-out rows with an answer: set 'Held-out fraction' above 0.")
    settings = settings or engine.default_settings()
    left_engine = other or engine
    rows, wins = [], {left: 0, right: 0, "tie": 0}
    scores: dict[str, list[float]] = {"left_em": [], "left_f1": [], "right_em": [], "right_f1": []}
    for i, msgs in enumerate(examples):
        last = max(j for j, t in enumerate(msgs) if t["role"] == "assistant")
        prompt_msgs = msgs[:last]
        prompt = "\n\n".join(t["content"] for t in prompt_msgs if t["role"] == "user")
        reference = msgs[last]["content"]
        if progress:
            progress(i / (len(examples) + 1), f"Answering held-out row {i + 1} of {len(examples)}")
        a = left_engine.generate(prompt_msgs, tuned=other is not None, settings=settings).strip()
        b = engine.generate(prompt_msgs, tuned=True, settings=settings).strip()
        row = {"prompt": prompt, "reference": reference, left: a, right: b}
        if is_short(reference):
            em_a, f1_a, em_b, f1_b = exact_match(a, reference), token_f1(a, reference), \
                exact_match(b, reference), token_f1(b, reference)
            for k, v in zip(scores, (em_a, f1_a, em_b, f1_b)):
                scores[k].append(v)
            side = closer(left, right, f1_a, f1_b)
            wins[side] += 1
            row.update({f"{left} EM": em_a, f"{left} F1": f1_a, f"{right} EM": em_b, f"{right} F1": f1_b,
                        "closer": side})
        else:
            row.update({f"{left} EM": None, f"{left} F1": None, f"{right} EM": None, f"{right} F1": None,
                        "closer": ""})
        rows.append(row)
    if progress:
        progress(len(examples) / (len(examples) + 1), "Measuring loss on the answers")
    # both sides cut the rows at the same length, so they are scored on the same tokens
    max_length = engine.cfg.train.max_length if engine.cfg is not None else None
    a_sum, a_n = left_engine.loss(examples, tuned=other is not None, max_length=max_length)
    b_sum, b_n = engine.loss(examples, tuned=True, max_length=max_length)
    left_loss = a_sum / a_n if a_n else float("nan")
    right_loss = b_sum / b_n if b_n else float("nan")
    stats = {"left": left, "right": right, "n": len(examples), "tokens": b_n,
             "left_loss": left_loss, "right_loss": right_loss, "left_ppl": _ppl(left_loss),
             "right_ppl": _ppl(right_loss), "short": len(scores["left_f1"]), "wins": wins,
             **{k: (sum(v) / len(v) if v else float("nan")) for k, v in scores.items()},
             "summary": closeness_summary(left, right, wins, len(examples))}
    if other is None:
        stats.update(base_loss=left_loss, tuned_loss=right_loss, base_ppl=stats["left_ppl"],
                     tuned_ppl=stats["right_ppl"])
    columns = ["prompt", "reference", left, right, f"{left} EM", f"{left} F1", f"{right} EM", f"{right} F1",
               "closer"]
    return pd.DataFrame(rows, columns=columns), stats


def _ppl(loss: float) -> float:
    if not math.isfinite(loss):
        return float("nan")
    return math.exp(min(loss, 700.0))  # exp(710) overflows a float


def save_csv(df, path: str | Path) -> Path:
    """The comparison table as UTF-8 CSV (with a BOM, so Excel shows non-ASCII text correctly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, encoding="utf-8-sig")
    return path


__all__ = ["GenSettings", "ChatEngine", "compare_heldout", "save_csv", "threads_for_chat", "unload", "loaded_base",
           "MAX_ADAPTERS", "SHORT_REFERENCE_WORDS", "base_path", "adapter_label", "pair_labels", "normalize_answer",
           "exact_match", "token_f1", "is_short", "closer", "closeness_summary"]
