"""The server against the audit of issue 22: an Origin is a whole origin (scheme, host and port), Host and Origin
are a bare host[:port] (no userinfo), X-Forwarded-For is not believed unless a proxy is configured, and uploads are
capped at the data size limit and removed from gradio's temp folder once replaced.

The apps run in a child process, as in tests/test_server.py (whose raw-HTTP helpers these tests reuse). The upload
cap is lowered to 4 KB in that child (studio.data.limits is read when the app launches), so a refused upload costs
8 KB, not 500 MB.
"""
from __future__ import annotations

import http.client
import os
import uuid
from pathlib import Path

import pytest

from tests.helpers import PASSWORD, free_port, http_login, http_request, launch_app, stop_process

CAP = 4096  # the data size limit in the child app (studio.data.limits.MAX_DATA_BYTES is 500 MB)
LOWERED = (f"import sys, launch; from studio.data import limits; limits.MAX_DATA_BYTES = {CAP}; "
           f"sys.exit(launch.main(sys.argv[1:]))")


def _launch(tmp: Path, args: list[str], env_extra: dict[str, str] | None = None):
    """`launch.py ARGS` with the data cap lowered to CAP, in a child process: (port, process)."""
    port, proc, _ = launch_app(tmp, args, {"GRADIO_TEMP_DIR": str(tmp / "gradio"), **(env_extra or {})},
                               program=["-c", LOWERED])
    return port, proc


@pytest.fixture(scope="module")
def open_app(tmp_path_factory, demo_model_dir):
    tmp = tmp_path_factory.mktemp("open")
    port, proc = _launch(tmp, ["--allowed-hosts", "studio.lan,http://tools.lan:8443"])
    yield port, tmp / "gradio"
    stop_process(proc)


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory, demo_model_dir):
    port, proc = _launch(tmp_path_factory.mktemp("auth"), [], {"STUDIO_AUTH": f"ann:{PASSWORD}"})
    yield port
    stop_process(proc)


def _refused_origin(port: int, origin: str, host: str | None = None) -> bool:
    headers = {"Origin": origin, **({"Host": host} if host else {})}
    status, _, text = http_request(port, "GET", "/config", headers)
    assert status in (200, 403), (origin, status, text[:200])
    return status == 403 and "not allowed" in text


# --- 1. an Origin is scheme, host and port --------------------------------------------------------

def test_a_page_of_another_local_server_is_refused(open_app):
    port, _ = open_app
    other = free_port()
    for origin in (f"http://localhost:{other}", f"http://127.0.0.1:{other}", "http://localhost",
                   f"http://[::1]:{other}", f"http://studio.lan:{other}", f"https://127.0.0.1:{port}",
                   "http://tools.lan:9999", "https://tools.lan:8443"):
        assert _refused_origin(port, origin), origin
    # the studio's own pages, under any of its names, and an origin given with --allowed-hosts
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}",
                   f"http://studio.lan:{port}", "http://tools.lan:8443"):
        assert not _refused_origin(port, origin), origin
    # the request's own origin (a proxy on another port that passes Host through) is the same origin
    assert not _refused_origin(port, "http://studio.lan:8080", host="studio.lan:8080")
    assert _refused_origin(port, "http://studio.lan:8081", host="studio.lan:8080")


# --- 2. Host and Origin are a bare host[:port] ----------------------------------------------------

def test_userinfo_and_other_url_parts_in_host_or_origin_are_refused(open_app):
    port, _ = open_app
    for host in ("evil.com@localhost", f"evil.com@localhost:{port}", f"evil.com:x@127.0.0.1:{port}",
                 f"localhost:{port}/x", "localhost:99999", "localhost:7x", "local host", "[::1", "[evil.com]"):
        status, _, body = http_request(port, "GET", "/", {"Host": host})
        assert status == 400 and "not allowed" in body, (host, status, body[:200])
    for origin in (f"http://evil.com@localhost:{port}", f"http://localhost:{port}@evil.com",
                   f"http://localhost:{port}/", f"http://localhost:{port}?x", f"ftp://localhost:{port}", "null"):
        assert _refused_origin(port, origin), origin


def test_host_and_origin_parsers():
    from studio.ui.guard import split_host, split_origin

    assert split_host("127.0.0.1:7860") == ("127.0.0.1", 7860)
    assert split_host("[::1]:7860") == ("::1", 7860) and split_host("[::1]") == ("::1", None)
    assert split_host("Studio.LAN.") == ("studio.lan", None)
    for bad in ("evil.com@localhost", "a@b:1", "localhost:", "localhost:0", "localhost:65536", "a/b", "a b", "",
                "[::g]", "::1", None):
        assert split_host(bad) is None, bad
    assert split_origin("http://localhost") == ("http", "localhost", 80)
    assert split_origin("https://[::1]") == ("https", "::1", 443)
    assert split_origin("HTTP://a.lan:8080") == ("http", "a.lan", 8080)
    for bad in ("null", "http://u@a.lan", "http://a.lan/", "a.lan:80", "file://a", "http://"):
        assert split_origin(bad) is None, bad


def test_a_bad_allowed_hosts_entry_is_refused_at_launch():
    from studio.ui.guard import request_guard

    with pytest.raises(ValueError, match="allowed-hosts"):
        request_guard("127.0.0.1", "evil.com@studio.lan", throttle=False)
    guard = request_guard("127.0.0.1", "studio.lan, https://proxy.lan, tools.lan:8443", throttle=False)
    assert {"studio.lan", "proxy.lan", "tools.lan"} <= guard.kwargs["names"]
    assert {("https", "proxy.lan", 443), ("http", "tools.lan", 8443)} <= guard.kwargs["origins"]


# --- 3. X-Forwarded-For ---------------------------------------------------------------------------

def test_rotating_forwarded_for_neither_escapes_the_throttle_nor_locks_the_owner_out(auth_app):
    port = auth_app
    statuses = []
    for i in range(20):  # one attacker on this machine, a made-up address per guess
        body = f"username=ann&password=wrong{i}".encode()
        statuses.append(http_request(port, "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded",
                                                          "X-Forwarded-For": f"10.0.{i}.1"}, body)[0])
    assert statuses[:5] == [400] * 5 and set(statuses[5:]) == {429}, statuses  # counted as one client
    status, headers, _ = http_login(port, "ann", PASSWORD, source="127.0.0.2")  # the owner, from another address
    assert status == 200 and "access-token" in headers.get("set-cookie", ""), status


def test_forwarded_headers_are_trusted_only_from_a_configured_proxy(monkeypatch):
    from studio.ui.app import trust_proxies

    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert trust_proxies(None) == "" and os.environ["FORWARDED_ALLOW_IPS"] == ""  # uvicorn trusts 127.0.0.1 else
    assert trust_proxies("10.0.0.2") == "10.0.0.2" and os.environ["FORWARDED_ALLOW_IPS"] == "10.0.0.2"
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "127.0.0.1")  # uvicorn's own setting, given on purpose: kept
    assert trust_proxies(None) == "127.0.0.1"


# --- 4. uploads -----------------------------------------------------------------------------------

def _upload(port: int, name: str, data: bytes) -> tuple[int, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/gradio_api/upload", body=body,
                     headers={"Host": f"127.0.0.1:{port}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_an_upload_over_the_data_size_limit_is_refused(open_app):
    port, upload_dir = open_app
    status, text = _upload(port, "big.csv", b"q,a\n" + b"x" * (2 * CAP))
    assert status == 413 and str(CAP) in text, (status, text[:200])
    assert not any(p.is_file() and p.stat().st_size > CAP for p in upload_dir.rglob("*"))  # nothing kept
    status, text = _upload(port, "small.csv", b"q,a\nhi,there\n")
    assert status == 200 and "small.csv" in text, (status, text[:200])


def test_a_replaced_upload_is_removed_from_gradios_temp_folder(tmp_path, monkeypatch):
    import gradio as gr

    from studio.ui.data import layout, wiring
    from tests.helpers import handler

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))

    def uploaded(digest: str, text: str) -> str:  # where gradio keeps an upload: <temp>/<content hash>/<name>
        p = tmp_path / "gradio" / digest / "data.csv"
        p.parent.mkdir(parents=True)
        p.write_text(text)
        return str(p)

    first, second = uploaded("a1", "q,a\n1,2\n"), uploaded("b2", "q,a\n3,4\n")
    own = tmp_path / "mine.csv"  # the user's own file, chosen through a loaded config: never removed
    own.write_text("q,a\n5,6\n")
    with gr.Blocks() as demo:
        t = layout.build()
        wiring.wire_pick(t)
    on_upload = handler(demo, t.upload, "upload").fn
    path, sample, chosen, _ = on_upload(second, [first, str(own)])
    # the sample picker names the upload (issue 23) instead of going blank
    assert path == second and sample.value == second and chosen == [str(own), second]
    assert not Path(first).exists() and not Path(first).parent.exists(), "the replaced upload is still on disk"
    assert Path(second).is_file() and own.is_file()
    assert on_upload(second, chosen)[2] == [str(own), second] and Path(second).is_file()  # the same file again
