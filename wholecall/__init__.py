"""wholecall: whole-call recording for telephony. The IVR's entry point is `from wholecall import Controller`.

The public API names are resolved lazily (PEP 562): a worker or an ingest process that
imports `wholecall.worker` or `wholecall.shm` must not pay for, or depend on, the
controller and its ZeroMQ supervisor just because this package's `__init__` ran.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: Public name -> the module that owns it.
_API = {
    name: "wholecall.controller"
    for name in (
        "AESCBCCipher", "CallChannel", "CallState", "Cause", "Conference", "Controller", "EnvelopeCipher",
        "EnvelopePrivateKey", "Error", "Hangup", "Leg", "MusicOnHold", "RecorderState",
        "UASWholeCallFileRecorder", "WholeCallRecorder", "new_iv", "new_key", "validate",
    )
}  # fmt: skip

__all__ = sorted(_API)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from wholecall.controller import (  # noqa: F401
        AESCBCCipher,
        CallChannel,
        CallState,
        Cause,
        Conference,
        Controller,
        EnvelopeCipher,
        EnvelopePrivateKey,
        Error,
        Hangup,
        Leg,
        MusicOnHold,
        RecorderState,
        UASWholeCallFileRecorder,
        WholeCallRecorder,
        new_iv,
        new_key,
        validate,
    )


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'wholecall' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
