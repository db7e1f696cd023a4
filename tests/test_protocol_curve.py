"""CURVE security: key files in zmq.auth's format, an allowed client gets through, clients
without keys, with unknown keys or with the wrong server key get nothing through."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from lorafx.errors import InvalidInput, NotFound
from lorafx.protocol import (
    Client,
    ClientCurveConfig,
    ClientTimeout,
    CurveConfig,
    ProtocolServer,
    generate_certificate,
    load_keypair,
    load_public_key,
)


@pytest.fixture
def keys(tmp_path):
    server_pub, server_sec = generate_certificate(tmp_path / "server", "server")
    allowed = tmp_path / "allowed"
    client_pub, client_sec = generate_certificate(tmp_path / "client", "artist1")
    allowed.mkdir()
    (allowed / "artist1.key").write_bytes(client_pub.read_bytes())
    _, rogue_sec = generate_certificate(tmp_path / "rogue", "rogue")
    _, other_server_sec = generate_certificate(tmp_path / "other", "other")
    return {"server_pub": server_pub, "server_sec": server_sec, "allowed": allowed,
            "client_sec": client_sec, "rogue_sec": rogue_sec,
            "other_server_pub": other_server_sec.with_suffix(".key")}


@pytest.fixture
def secure(keys):
    calls = []

    def put(req):
        calls.append((req.type, {n: np.array(a) for n, a in req.frames().items()}))
        return {"shot": req.body["shot"], "role": req.body["role"],
                "stored": sorted(req.frames())}

    server = ProtocolServer("tcp://127.0.0.1:*", {"shot.put_frames": put},
                            curve=CurveConfig(keys["server_sec"], keys["allowed"])).start()
    yield server, calls
    server.stop()


def test_certificate_files_and_loaders(keys, tmp_path):
    text = keys["server_sec"].read_text()
    assert "public-key = " in text and "secret-key = " in text
    assert "secret-key" not in keys["server_pub"].read_text()
    assert stat.S_IMODE(keys["server_sec"].stat().st_mode) == 0o600
    public, secret = load_keypair(keys["server_sec"])
    assert len(public) == 40 and len(secret) == 40
    assert load_public_key(keys["server_pub"]) == public
    with pytest.raises(InvalidInput, match="no secret key"):
        load_keypair(keys["server_pub"])
    with pytest.raises(NotFound):
        load_keypair(tmp_path / "missing.key_secret")
    junk = tmp_path / "junk.key"
    junk.write_text("not a certificate\n")
    with pytest.raises(InvalidInput):
        load_public_key(junk)
    with pytest.raises(NotFound, match="allowed-clients directory"):
        CurveConfig(keys["server_sec"], tmp_path / "nowhere")


def test_authenticated_client_works(keys, secure):
    server, calls = secure
    curve = ClientCurveConfig(keys["client_sec"], keys["server_pub"])
    with Client(server.endpoint, timeout_s=5, curve=curve) as c:
        assert c.hello()["auth"] == "curve"
        frame = (np.arange(480 * 832 * 4) % 2048).reshape(480, 832, 4).astype(np.float16)
        assert c.put_frames("s", "plate", {1001: frame}) == [1001]
    ((type_, got),) = calls
    assert type_ == "shot.put_frames" and np.array_equal(got[1001], frame)


def test_curve_lifts_the_loopback_only_rule(keys):
    # Plain mode refuses this endpoint (see test_plain_mode_is_loopback_only); CURVE allows it.
    ProtocolServer("tcp://0.0.0.0:5555", curve=CurveConfig(keys["server_sec"], keys["allowed"]))


@pytest.mark.parametrize("who", ["no keys", "unknown keys", "wrong server key"])
def test_unauthenticated_clients_get_nothing_through(keys, secure, who):
    server, calls = secure
    curve = {
        "no keys": None,
        "unknown keys": ClientCurveConfig(keys["rogue_sec"], keys["server_pub"]),
        "wrong server key": ClientCurveConfig(keys["client_sec"], keys["other_server_pub"]),
    }[who]
    with Client(server.endpoint, timeout_s=0.5, curve=curve) as c:
        with pytest.raises(ClientTimeout, match=server.endpoint.replace(".", r"\.")):
            c.put_frames("s", "plate", {1: np.zeros((4, 4, 4), np.float16)})
        with pytest.raises(ClientTimeout, match="CURVE keys"):
            c.health()
    assert calls == []
    assert server.stats()["requests"] == 0  # not even a malformed message got in
