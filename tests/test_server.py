"""The server as a browser (or a hostile page) meets it: Host and Origin checks, the login throttle, where the
password comes from.

Starts `python launch.py` in a subprocess (as a user does) and speaks raw HTTP with http.client, so the Host and
Origin headers are exactly what the test says. DNS rebinding is the shape being refused: a page on
attacker.example whose name later resolves to 127.0.0.1 sends `Host: attacker.example` and same-origin requests.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PASSWORD, ROOT, http_login, http_request, launch_app, stop_process

@pytest.fixture(scope="module")
def open_app(tmp_path_factory, demo_model_dir):
    port, proc, log = launch_app(tmp_path_factory.mktemp("open"), ["--allowed-hosts", "studio.lan"])
    yield port
    stop_process(proc)


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory, demo_model_dir):
    tmp = tmp_path_factory.mktemp("auth")
    port, proc, log = launch_app(tmp, [], {"STUDIO_AUTH": f"ann:{PASSWORD}"})
    yield port, proc, log
    stop_process(proc)


# --- Host ------------------------------------------------------------------------------------------

def test_a_foreign_host_name_is_refused(open_app):
    port = open_app
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io"):
        status, _, body = http_request(port, "GET", "/", {"Host": host})
        assert status in (400, 403) and "not allowed" in body, (host, status, body[:200])
        status, _, _ = http_request(port, "GET", "/config", {"Host": host})
        assert status in (400, 403), host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost", f"studio.lan:{port}"):
        assert http_request(port, "GET", "/", {"Host": host})[0] == 200, host


# --- Origin ----------------------------------------------------------------------------------------

def test_a_foreign_origin_is_refused_on_the_api_and_never_echoed(open_app):
    port = open_app
    join = ("POST", "/gradio_api/queue/join", b'{"data": [], "fn_index": 0, "session_hash": "x1"}')
    calls = (("GET", "/config", None), ("GET", "/gradio_api/info", None), join)
    for origin in ("http://attacker.example", "null", f"http://attacker.example:{port}"):
        for method, path, body in calls:
            status, headers, text = http_request(port, method, path,
                                                 {"Origin": origin, "Content-Type": "application/json"}, body)
            assert status == 403 and "not allowed" in text, (origin, path, status)
            assert "access-control-allow-origin" not in headers, (origin, path, headers)
    # Host [::1]: gradio's own CORS layer echoed any Origin here and served the config. Now the guard refuses
    # first; that layer sits outside the guard and may still stamp its header on the refusal, whose body is
    # only the fixed sentence below.
    for method, path, body in calls:
        status, _, text = http_request(port, method, path, {"Host": f"[::1]:{port}", "Origin": "http://attacker.example",
                                                        "Content-Type": "application/json"}, body)
        assert status == 403 and text.startswith("Origin 'http://attacker.example' is not allowed"), (path, status)
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://studio.lan:{port}"):
        status, headers, _ = http_request(port, "GET", "/config", {"Origin": origin})
        assert status == 200, origin
        assert headers.get("access-control-allow-origin") in (None, origin)


# --- login -----------------------------------------------------------------------------------------

def test_failed_logins_are_throttled_per_client_and_the_password_comes_from_the_environment(auth_app):
    port, proc, log = auth_app
    assert PASSWORD not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert "STUDIO_AUTH" in log.read_text()  # says which source it used
    statuses = [http_login(port, "ann", f"wrong{i}")[0] for i in range(6)]
    assert statuses[:5] == [400] * 5, statuses
    assert statuses[5] == 429, statuses  # the sixth wrong password within a minute is not even checked
    status, headers, body = http_login(port, "ann", PASSWORD)
    assert status == 429 and int(headers["retry-after"]) > 0 and "try again" in body.lower()
    # per client: another address on this machine is not locked out, and the right password works there at once
    status, headers, _ = http_login(port, "ann", PASSWORD, source="127.0.0.2")
    assert status == 200 and "access-token" in headers.get("set-cookie", "")


def test_login_throttle_window_and_overall_cap():
    from studio.ui.guard import LoginThrottle

    now = [1000.0]
    t = LoginThrottle(per_client=5, overall=8, window_s=60, clock=lambda: now[0])
    for _ in range(5):
        assert t.wait_s("a") == 0
        t.begin("a")
    assert 59 <= t.wait_s("a") <= 60 and t.wait_s("b") == 0
    now[0] += 61  # the window passed: "a" may try again
    assert t.wait_s("a") == 0
    t.begin("a")
    t.succeeded("a")  # a success forgets the failures
    for c in "bcdefghi":  # eight addresses, one failure each: the overall cap stops the ninth address
        assert t.wait_s(c) == 0
        t.begin(c)
    assert t.wait_s("z") > 0


# --- where the password comes from ---------------------------------------------------------------

def test_auth_file_env_and_command_line(tmp_path, capsys, monkeypatch):
    from studio.ui.guard import resolve_auth

    monkeypatch.delenv("STUDIO_AUTH", raising=False)
    f = tmp_path / "auth.txt"
    f.write_text(f"ann:{PASSWORD}\n")
    f.chmod(0o600)
    creds, source = resolve_auth(None, str(f))
    assert creds == ("ann", PASSWORD) and str(f) in source
    assert "warning" not in capsys.readouterr().err
    f.chmod(0o644)
    assert resolve_auth(None, str(f))[0] == ("ann", PASSWORD)
    assert "chmod 600" in capsys.readouterr().err  # readable by others: said, not refused (docker secrets are 0444)
    f.write_text("no-colon\n")
    with pytest.raises(ValueError, match="user:password"):
        resolve_auth(None, str(f))
    with pytest.raises(ValueError, match="auth-file"):
        resolve_auth(None, str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="not both"):
        resolve_auth("ann:x", str(f))
    monkeypatch.setenv("STUDIO_AUTH", "bob:pw")
    assert resolve_auth(None, None) == (("bob", "pw"), "STUDIO_AUTH")
    assert resolve_auth("ann:x", None)[0] == ("ann", "x")  # the command line wins over the environment
    monkeypatch.delenv("STUDIO_AUTH")
    assert resolve_auth(None, None) == (None, "")


def test_cli_and_launcher_take_the_new_options():
    from studio.cli import build_parser

    a = build_parser().parse_args(["ui", "--auth-file", "/x", "--allowed-hosts", "a.lan,b.lan"])
    assert a.auth_file == "/x" and a.allowed_hosts == "a.lan,b.lan"
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60).stdout
    assert "--auth-file" in out and "--allowed-hosts" in out and "STUDIO_AUTH" in out
