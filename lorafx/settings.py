"""Settings arrive as msgpack maps from any client: check each value against the type the
dataclass declares, so a wrong type is an error naming the setting, never a TypeError deep in a
job."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields

from lorafx.errors import InvalidInput

_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _coerce(key: str, value, hint, what: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # Optional[X] only
        return _coerce(key, value, inner, what)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise InvalidInput(f"{what} {key!r} must be a list of {len(args)} numbers, got {value!r}", setting=key)
        return tuple(_coerce(key, v, a, what) for v, a in zip(value, args))
    ok = value
    if hint is bool:
        ok = value if isinstance(value, bool) else None
    elif hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = value if isinstance(value, int) and not isinstance(value, bool) else None
    elif hint is float:
        ok = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if ok is not None and not math.isfinite(ok):
            raise InvalidInput(f"{what} {key!r} must be finite, got {value!r}", setting=key)
    elif hint is str:
        ok = value if isinstance(value, str) else None
    if ok is None:
        raise InvalidInput(f"{what} {key!r} must be {_TYPE_NAMES.get(hint, hint)}, got {value!r}", setting=key)
    return ok


def typed(cls, values: dict, what: str = "setting") -> dict:
    """`values` checked against dataclass `cls`'s field types (ints accepted for floats, whole
    floats for ints); unknown keys are an error naming them."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidInput(f"unknown {what}s: {', '.join(unknown)}", unknown=unknown)
    hints = typing.get_type_hints(cls)
    return {k: _coerce(k, v, hints[k], what) for k, v in values.items()}
