"""CURVE certificates (PROTOCOL.md §9): generate, load, and apply them to sockets.

Files are exactly what ``zmq.auth.create_certificates(dir, name)`` writes: ``name.key`` (public
key) and ``name.key_secret`` (public + secret key), Z85 text. The server needs its own secret file
and a directory of allowed clients' public ``*.key`` files; a client needs its own secret file
and the server's public file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from lorafx.errors import InvalidInput, NotFound


def generate_certificate(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` and ``name.key_secret`` into `directory` (created if needed).

    Returns (public_file, secret_file). The secret file is made owner-only (0600).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(d), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_public_key(path: str | os.PathLike) -> bytes:
    """The Z85 public key of a ``.key`` or ``.key_secret`` file."""
    public, _ = _load(path)
    return public


def load_keypair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a ``.key_secret`` file."""
    public, secret = _load(path)
    if not secret:
        raise InvalidInput(f"{path} holds no secret key (use the .key_secret file, not .key)",
                           path=str(path))
    return public, secret


def _load(path) -> tuple[bytes, bytes | None]:
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"CURVE certificate {p} does not exist", path=str(p))
    try:
        public, secret = zmq.auth.load_certificate(str(p))
    except (ValueError, OSError) as e:
        raise InvalidInput(f"{p} is not a ZeroMQ certificate: {e}", path=str(p)) from None
    if not public or len(public) != 40:
        raise InvalidInput(f"{p} has no valid 40-character Z85 public-key", path=str(p))
    return public, secret


@dataclass(frozen=True)
class CurveConfig:
    """Server side: its secret certificate and the directory of allowed clients' public keys."""

    server_secret_file: Path
    clients_dir: Path

    def __post_init__(self):
        object.__setattr__(self, "server_secret_file", Path(self.server_secret_file))
        object.__setattr__(self, "clients_dir", Path(self.clients_dir))
        if not self.clients_dir.is_dir():
            raise NotFound(f"allowed-clients directory {self.clients_dir} does not exist",
                           path=str(self.clients_dir))
        load_keypair(self.server_secret_file)  # fail at configuration time, not at bind

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE server (call before bind)."""
        public, secret = load_keypair(self.server_secret_file)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True


@dataclass(frozen=True)
class ClientCurveConfig:
    """Client side: its own secret certificate and the server's public certificate."""

    client_secret_file: Path
    server_public_file: Path

    def __post_init__(self):
        object.__setattr__(self, "client_secret_file", Path(self.client_secret_file))
        object.__setattr__(self, "server_public_file", Path(self.server_public_file))
        load_keypair(self.client_secret_file)
        load_public_key(self.server_public_file)

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE client of that server (call before connect)."""
        public, secret = load_keypair(self.client_secret_file)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = load_public_key(self.server_public_file)
