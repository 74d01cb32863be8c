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
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..config import GenSettings, RunConfig
from ..runs.layout import resolve_adapter
from .labels import adapter_label, base_source, local_key, mark_cut, source_name, spec

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
    """On the CPU, chat computes in what the measured probe chose (studio.models.precision: bf16 where the CPU has it
    natively, fp32 on AVX2-only ones), whatever dtype the run was trained in."""
    from ..models import cpu_precision
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


def free_gpu(what: str) -> str:
    """Drop the base model when it sits on a GPU, because `what` (a training run, a merged export) is about to
    need that GPU: the trainer is another process and cannot use the memory this one holds (5.7 GB for a 4-bit
    Llama-3-8B). Returns the sentence to tell the user ("" when no model was on a GPU). A generation in progress
    is waited for up to 10 s, then left alone and said so."""
    global _BASE
    if _BASE is None or not str(_BASE.device).startswith("cuda"):
        return ""
    if not _LOCK.acquire(timeout=10):
        return (f"The Chat tab is still generating on the GPU, so its model stays loaded while {what} starts: "
                f"if it runs out of memory, wait for the answer and start it again.")
    try:
        if _BASE is None or not str(_BASE.device).startswith("cuda"):
            return ""
        name = Path(str(_BASE.key[0])).name
        _free_base()
    finally:
        _LOCK.release()
    return f"The Chat tab's model ({name}) was unloaded from the GPU to leave its memory to {what}; it loads " \
           f"again when you chat."


def out_of_memory(settings: GenSettings) -> RuntimeError:
    """What a generation that ran out of GPU memory says, after giving back what the failed step cached (the
    UI server lives on: its other tabs, and the next answer, need that memory)."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return RuntimeError(f"The GPU ran out of memory while answering: lower Max new tokens (now "
                        f"{settings.max_new_tokens}) or shorten the conversation, or stop a run that trains on this "
                        f"GPU; then ask again.")


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
        from ..env.devices import pick_device
        from ..models import load_tokenizer

        adapter, cfg, run_dir = resolve_adapter(run_dir_or_adapter_dir, checkpoint)
        mcfg = cfg.model if cfg is not None else RunConfig().model
        if like is not None:
            mine = local_key(source_name(adapter, cfg))
            if mine != like.key[0]:
                raise ValueError(
                    f"{adapter_label(*spec(run_dir, adapter))} was trained on another base model "
                    f"({source_name(adapter, cfg)}) than {like.label} ({like.key[0]}). Only one base model is kept "
                    f"in memory, so only adapters of the same base can be compared side by side: pick the base "
                    f"model or one of those.")
            path, device, quantize = Path(mine), like.key[1], like.quantize
            mcfg = dataclasses.replace(mcfg, compute_dtype=like.key[2])
            key = like.key
        else:
            path = base_source(adapter, cfg)
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

        from ..models import check_weights
        if _BASE is None or _BASE.key != self.key:
            from ..models import load_model
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
            check_weights(self.adapter_dir)  # a damaged or foreign weights file named, not a safetensors error
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
        return spec(self.run_dir, self.adapter_dir)

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
        from ..data import render_chat
        settings = settings or GenSettings()
        msgs = [{"role": m["role"], "content": content_text(m.get("content"))} for m in messages
                if m.get("role") in ("system", "user", "assistant")]
        if settings.system_prompt.strip() and not (msgs and msgs[0]["role"] == "system"):
            msgs.insert(0, {"role": "system", "content": settings.system_prompt.strip()})
        text, _ = render_chat(self.tokenizer, msgs, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    def _eos_ids(self, model) -> list[int]:
        tok = self.tokenizer
        eos = model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab()
                  else None):
            if t is not None and t not in eos:
                eos.append(t)
        return eos

    def _gen_kwargs(self, model, settings: GenSettings) -> dict:
        tok = self.tokenizer
        eos = self._eos_ids(model)
        kw = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=eos or None,
                  pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else None))
        if settings.temperature > 0:
            # top_k=0 switches off a top-k a model's generation_config may bring: only top-p applies
            kw.update(do_sample=True, temperature=float(settings.temperature), top_p=float(settings.top_p), top_k=0)
        else:
            kw.update(do_sample=False)
        return kw

    def _generate_ids(self, input_ids, tuned: bool, settings: GenSettings, streamer=None, stop=None):
        """Call with _LOCK held. (new token ids (1-D), whether the answer hit max_new_tokens without an eos)."""
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
        except torch.OutOfMemoryError:
            raise out_of_memory(settings) from None
        finally:
            if self.threads:
                torch.set_num_threads(old_threads)
        new = out[0, ids.shape[1]:].cpu()
        # cut = the limit reached with no eos at the end (an answer that ends on eos at the limit is whole)
        cut = len(new) >= settings.max_new_tokens and int(new[-1]) not in self._eos_ids(model)
        return new, cut

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- public generation --
    def generate(self, messages: list[dict], tuned: bool = True, settings: GenSettings | None = None) -> str:
        """The assistant's reply to `messages` ({role, content} turns), with the adapter on (tuned) or off."""
        return self._decode(self.generate_ids(messages, tuned, settings))

    def answer(self, messages: list[dict], tuned: bool = True, settings: GenSettings | None = None,
               stop: threading.Event | None = None) -> tuple[str, bool]:
        """(reply as generate() gives it, whether it hit Max new tokens); `stop` set ends it early (between tokens)."""
        settings = settings or GenSettings()
        input_ids = self.encode(messages, settings)
        with _LOCK:
            ids, cut = self._generate_ids(input_ids, tuned, settings, stop=stop)
        return self._decode(ids), cut

    def generate_ids(self, messages: list[dict], tuned: bool = True, settings: GenSettings | None = None) -> list[int]:
        """The reply's token ids (eos included when the model stopped on its own)."""
        settings = settings or GenSettings()
        input_ids = self.encode(messages, settings)
        with _LOCK:
            return self._generate_ids(input_ids, tuned, settings)[0].tolist()

    def stream(self, messages: list[dict], tuned: bool = True, settings: GenSettings | None = None,
               mark: bool = False) -> Iterator[str]:
        """Like generate(), yielding the text so far (each string extends the previous); the last is the answer,
        with mark: marked (labels.mark_cut) when it hit Max new tokens."""
        from transformers import TextIteratorStreamer

        settings = settings or GenSettings()
        input_ids = self.encode(messages, settings)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        result: dict = {}

        def work():
            try:
                result["ids"], result["cut"] = self._generate_ids(input_ids, tuned, settings, streamer, stop)
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
            if mark and result["cut"]:
                yield mark_cut(final, settings.max_new_tokens)
            elif final != text or not text:  # the streamer's word-wise decode can differ in rare spacing cases
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

        from ..data import tokenize_messages
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


def content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of {"type": "text", "text": ...}."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(content_text(c) for c in content)
    return str(content)
