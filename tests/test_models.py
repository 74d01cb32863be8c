"""Where a model comes from: the hub is asked as huggingface_hub would ask it (its offline mode, its endpoint, so a
mirror set with HF_ENDPOINT is the one tried, not huggingface.co)."""
from __future__ import annotations

import socket

from studio.models import hub_reachable


def test_hub_reachability_follows_huggingface_hub(monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as mirror:  # a "mirror" that accepts connections, on this machine
        mirror.bind(("127.0.0.1", 0))
        mirror.listen(1)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{mirror.getsockname()[1]}")
        assert hub_reachable(timeout=2)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: never asked
        assert not hub_reachable(timeout=2)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: the connection is refused
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
        assert not hub_reachable(timeout=2)
