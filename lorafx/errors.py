"""Errors shared by every layer. Each carries a stable `code` that the wire protocol sends
as-is, so a host plugin can react to the kind of failure without parsing text."""

from __future__ import annotations


class LorafxError(Exception):
    """Base of every error lorafx raises on purpose. `code` is stable and travels on the wire."""

    code = "internal"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidInput(LorafxError):
    """The caller's data is wrong (frame count, shapes, NaN pixels, empty matte...)."""

    code = "invalid_input"


class NotFound(LorafxError):
    """An unknown shot, job, LoRA or file."""

    code = "not_found"


class Cancelled(LorafxError):
    """The work was cancelled by a user."""

    code = "cancelled"


class ProtocolError(LorafxError):
    """A malformed, truncated or unexpected message."""

    code = "protocol_error"


class VersionMismatch(ProtocolError):
    code = "version_mismatch"


class TooLarge(ProtocolError):
    code = "too_large"


class Unauthorized(LorafxError):
    code = "unauthorized"


class Busy(LorafxError):
    code = "busy"


class CorruptFile(LorafxError):
    """A stored file (LoRA, checkpoint) failed its integrity check and was not used."""

    code = "corrupt_file"


ERRORS_BY_CODE = {
    cls.code: cls
    for cls in (LorafxError, InvalidInput, NotFound, Cancelled, ProtocolError, VersionMismatch,
                TooLarge, Unauthorized, Busy, CorruptFile)
}


def error_from_dict(d: dict) -> LorafxError:
    """Rebuild an error received over the wire (unknown codes become LorafxError)."""
    cls = ERRORS_BY_CODE.get(d.get("code", "internal"), LorafxError)
    err = cls(str(d.get("message", "")), **(d.get("details") or {}))
    if cls is LorafxError:
        err.code = str(d.get("code", "internal"))
    return err
