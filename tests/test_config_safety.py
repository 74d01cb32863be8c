"""Hostile config files and model folders (issue 22): a YAML alias bomb, brackets nested past Python's recursion
limit, a lone surrogate in a text field and a weights file that is a link to /etc/passwd each end in one sentence
naming the field or file, quickly and in bounded memory, never a traceback or a hang."""
import json
import os
import resource
import subprocess
import sys
import time

import pytest

from studio.cli import main
from tests.helpers import ROOT

# A config that expands to 10^9 leaves through nested aliases, in 473 bytes ("billion laughs").
_LAUGHS = '&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'
for _i in range(1, 9):
    _LAUGHS = f"&a{_i} [{_LAUGHS}, " + ", ".join([f"*a{_i - 1}"] * 9) + "]"
BOMBS = {
    "train.learning_rate": f"train:\n  learning_rate: {_LAUGHS}\n",
    "train.levers": f"train:\n  levers: {_LAUGHS}\n",
    "data.system_prompt": f"data:\n  system_prompt: {_LAUGHS}\n",
    "data.columns.prompt": f"data:\n  columns:\n    prompt: {_LAUGHS}\n",
}
BOUNDED_S = 60  # after the fix a check takes ~1 s; before it, minutes or a MemoryError


def _limit_memory():  # 4 GB of address space: before the fix the error message alone would need ~7 GB
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def _bounded(code: str) -> subprocess.CompletedProcess:
    """`python -c CODE` from the repository root, with a time and a memory limit (a hang must fail the test, not
    stall the suite or the machine)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=BOUNDED_S,
                          cwd=ROOT, env=env, preexec_fn=_limit_memory)


def _check(path, capsys) -> tuple[int, str]:
    code = main(["config", "check", "--file", str(path)])  # an exception escaping here fails the test
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("field", list(BOMBS))
def test_alias_bomb_in_each_field_is_refused_fast(field, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS[field])
    t0 = time.monotonic()
    res = _bounded(f"from studio.cli import main; raise SystemExit(main(['config', 'check', '--file', {str(path)!r}]))")
    text = res.stdout + res.stderr
    assert res.returncode == 2 and "alias" in text and "Traceback" not in text, text[-1500:]
    assert len(text) < 1000 and time.monotonic() - t0 < BOUNDED_S


def test_load_config_handler_refuses_the_bomb(tmp_path):
    """The Train tab's Load config: one uploaded file must not hang the web server."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS["train.learning_rate"])
    res = _bounded("from studio.ui.settings import load_config\n"
                   f"try:\n    load_config({str(path)!r})\nexcept ValueError as e:\n    print('REFUSED', e)\n")
    assert res.returncode == 0 and "REFUSED" in res.stdout and "alias" in res.stdout, (res.stdout + res.stderr)[-1500:]


def test_values_of_the_wrong_shape_are_quoted_briefly():
    """Without aliases too: a list where a number belongs is refused before it is formatted, and a long value is
    quoted by at most ~80 characters."""
    from studio.checks import parse_checks
    from studio.config import RunConfig
    big = [["x" * 100] * 100] * 100  # 10^4 strings of 100 characters behind shared references: 1 MB of repr
    for sect, changes in (("train", {"learning_rate": big}), ("train", {"levers": big}),
                          ("data", {"system_prompt": big}), ("data", {"columns": {"prompt": big}}),
                          ("train", {"batch_size": "9" * 100_000})):
        with pytest.raises(ValueError) as e:
            RunConfig.from_dict({sect: changes})
        assert len(str(e.value)) < 400, str(e.value)[:400]
    with pytest.raises(ValueError) as e:
        parse_checks([{"name": "n", "type": "length", "min_words": big}])
    assert len(str(e.value)) < 400, str(e.value)[:400]


def test_big_config_file_is_refused_before_parsing(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 200_000 + "name: x\n")  # 2 MB
    code, text = _check(path, capsys)
    assert code == 2 and "1 MB" in text and "2.0 MB" in text, text


@pytest.mark.parametrize("size", [200_000, 3_000_000])
def test_deep_brackets_are_a_sentence(size, tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * size)
    code, text = _check(path, capsys)
    assert code == 2 and "Traceback" not in text and len(text) < 500, text[-500:]
    want = "not valid YAML for the studio: nested more than 64" if size < 1_000_000 else "over 1 MB is refused"
    assert want in text, text


def test_deep_brackets_in_checks_yaml_are_a_sentence():
    from studio.checks import from_yaml
    with pytest.raises(ValueError, match="nested more than"):
        from_yaml("[" * 200_000)


@pytest.mark.parametrize("yaml_text,label", [
    ('name: "run\\udc80"\n', "Run name"),
    ('data:\n  system_prompt: "be kind \\udc80"\n', "System prompt"),
    ('data:\n  columns:\n    prompt: "q\\ud800"\n', "Prompt column"),
    ('data:\n  path: "/data/caf\\udce9.jsonl"\n', "Dataset file"),
])
def test_lone_surrogate_names_the_field(yaml_text, label, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml_text)
    code, text = _check(path, capsys)
    assert code == 2 and label in text and "surrogate" in text and "UTF-8" in text, text


def test_lone_surrogate_from_python_names_the_field():
    """A surrogateescape'd file name (os.fsdecode of non-UTF-8 bytes) given as the data file."""
    from studio.config import RunConfig
    with pytest.raises(ValueError, match=r"Dataset file \(data.path\).*surrogate"):
        RunConfig(data={"path": os.fsdecode(b"/data/caf\xe9.jsonl")})


# --- model folders ------------------------------------------------------------------------------------------------

def _safetensors(path, n_bytes: int = 4) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * n_bytes)


def test_weights_linked_to_etc_passwd_are_named(tmp_path):
    from studio.models import ModelError, resolve_source
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").symlink_to("/etc/passwd")
    with pytest.raises(ModelError) as e:
        resolve_source(str(tmp_path))
    msg = str(e.value)
    assert "model.safetensors" in msg and "not a safetensors file" in msg and "/etc/passwd" in msg, msg


def test_adapter_weights_are_checked(tmp_path):
    from studio.models import ModelError, check_weights
    _safetensors(tmp_path / "adapter_model.safetensors")
    check_weights(tmp_path)  # a whole file passes
    _safetensors(tmp_path / "adapter_model.safetensors", n_bytes=2)
    with pytest.raises(ModelError, match="adapter_model.safetensors.*cut short"):
        check_weights(tmp_path)
    (tmp_path / "adapter_model.safetensors").unlink()
    (tmp_path / "adapter_model.safetensors").symlink_to("/etc/passwd")
    with pytest.raises(ModelError, match=r"adapter_model.safetensors is not a safetensors file.*link to /etc/passwd"):
        check_weights(tmp_path)
