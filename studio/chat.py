"""Chat with a run: ONE base model in memory, the run's adapter(s) loaded on it through peft.

Tuned = the adapter on; Base = the same weights inside `with model.disable_adapter():`, so the two panes
differ only by the LoRA update and never cost a second copy of the base. Loading another run (or
checkpoint) on the same base only loads its adapter; a different base replaces the one held.

No gradio here; torch/transformers/peft are imported inside the functions that use them.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import math
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import GenSettings, RunConfig
from .layout import EVAL_SET, resolve_adapter

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

def _base_source(adapter: Path, cfg: RunConfig | None) -> Path:
    from .models import resolve_source
    if cfg is not None:
        return resolve_source(cfg.model.source)
    import json
    src = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not src:
        raise ValueError(f"{adapter}: no studio config and no base_model_name_or_path in adapter_config.json, "
                         f"so the base model is unknown.")
    return resolve_source(src)


def threads_for_chat(runs_root: str | Path | None = None) -> int:
    """1 while a run is training, else 0 (= torch's default, one thread per core).

    On a 2-core CPU a reply at the default competes with the trainer for both cores; at one thread the
    trainer keeps a core to itself, and the reply is slower, which is the better trade while a run goes."""
    from .runs import active_run
    return 1 if active_run(runs_root) is not None else 0


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
             quantize: bool | None = None, device: str | None = None) -> "ChatEngine":
        """An engine for a run's final adapter ("adapter"), one of its checkpoints ("checkpoint-N"), or an
        adapter folder. quantize=None: the run's quantisation on CUDA; on CPU the base is loaded unquantised
        in float32, which is faster than bitsandbytes' CPU 4-bit kernels and exact."""
        from .models import load_tokenizer, pick_device

        adapter, cfg, run_dir = resolve_adapter(run_dir_or_adapter_dir, checkpoint)
        path = _base_source(adapter, cfg)
        device = device or pick_device()
        mcfg = cfg.model if cfg is not None else RunConfig().model
        if quantize is None:
            quantize = device == "cuda" and mcfg.quantization == "nf4"
        if device == "cpu":  # bf16/fp16 matmuls are ~100x slower than fp32 on an AVX2 CPU
            mcfg = dataclasses.replace(mcfg, compute_dtype="float32")
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
                    mcfg = dataclasses.replace(mcfg, compute_dtype="float32")
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


# --- held-out comparison ---------------------------------------------------------------------------

def compare_heldout(engine: ChatEngine, run_dir: str | Path | None = None, n: int = 8,
                    settings: GenSettings | None = None, progress: Callable[[float, str], None] | None = None):
    """Base vs tuned on the run's held-out rows: a DataFrame[prompt, reference, base, tuned] of the first n
    rows, and {base_loss, tuned_loss, base_ppl, tuned_ppl, n, tokens} over their assistant tokens."""
    import pandas as pd

    from .data import read_jsonl
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
    rows = []
    for i, msgs in enumerate(examples):
        last = max(j for j, t in enumerate(msgs) if t["role"] == "assistant")
        prompt_msgs = msgs[:last]
        prompt = "\n\n".join(t["content"] for t in prompt_msgs if t["role"] == "user")
        if progress:
            progress(i / (len(examples) + 1), f"Answering held-out row {i + 1} of {len(examples)}")
        base = engine.generate(prompt_msgs, tuned=False, settings=settings).strip()
        tuned = engine.generate(prompt_msgs, tuned=True, settings=settings).strip()
        rows.append({"prompt": prompt, "reference": msgs[last]["content"], "base": base, "tuned": tuned})
    if progress:
        progress(len(examples) / (len(examples) + 1), "Measuring loss on the answers")
    b_sum, b_n = engine.loss(examples, tuned=False)
    t_sum, t_n = engine.loss(examples, tuned=True)
    base_loss = b_sum / b_n if b_n else float("nan")
    tuned_loss = t_sum / t_n if t_n else float("nan")
    stats = {"base_loss": base_loss, "tuned_loss": tuned_loss, "base_ppl": _ppl(base_loss),
             "tuned_ppl": _ppl(tuned_loss), "n": len(examples), "tokens": b_n}
    df = pd.DataFrame(rows, columns=["prompt", "reference", "base", "tuned"])
    return df, stats


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
           "MAX_ADAPTERS"]
