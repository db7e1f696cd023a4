"""lorafx wire protocol: ZeroMQ ROUTER/DEALER, msgpack header + raw pixel buffers.

The specification for non-Python clients is PROTOCOL.md beside this file. Python users want
`Client` (hosts, scripts) or `ProtocolServer` (the server app registers handlers on it).
"""

from .client import Client, ClientTimeout
from .codec import decode, encode, frames_by_number, inline_descriptor, path_descriptor
from .keys import (
    ClientCurveConfig,
    CurveConfig,
    generate_certificate,
    load_keypair,
    load_public_key,
)
from .messages import (
    DEFAULT_ENDPOINT,
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    Limits,
    validate_body,
)
from .server import ProtocolServer, Request

__all__ = [
    "Client", "ClientTimeout", "ProtocolServer", "Request", "CurveConfig", "ClientCurveConfig",
    "generate_certificate", "load_keypair", "load_public_key", "encode", "decode",
    "inline_descriptor", "path_descriptor", "frames_by_number", "Limits", "DEFAULT_LIMITS",
    "DEFAULT_ENDPOINT", "PROTOCOL_VERSION", "REQUEST_TYPES", "validate_body",
]
