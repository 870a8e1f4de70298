"""The test session's socket guard: loopback works, anything else fails naming the address."""

from __future__ import annotations

import socket
import threading

import pytest


def test_non_loopback_connections_are_refused():
    for address in (("10.255.255.1", 80), ("93.184.216.34", 443), ("huggingface.co", 443)):
        with socket.socket() as s, pytest.raises(ConnectionRefusedError, match="network access blocked"):
            s.connect(address)
    with pytest.raises(ConnectionRefusedError, match="blocked"):
        socket.create_connection(("8.8.8.8", 53), timeout=1)


def test_loopback_connections_work():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = threading.Thread(target=lambda: server.accept()[0].close())
    accepted.start()
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    accepted.join(5)
    server.close()
