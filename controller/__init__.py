"""The public API of wholecall: `Controller`, `CallChannel`, `WholeCallRecorder`, `Hangup`, `Error`."""

from .channel import CallChannel, Leg
from .cipher import AESCBCCipher, EnvelopeCipher, EnvelopePrivateKey, new_iv, new_key, validate
from .controller import Controller
from .errors import Error, Hangup
from .media import Conference, MusicOnHold
from .recorder import UASWholeCallFileRecorder, WholeCallRecorder
from .states import CallState, Cause, RecorderState

__all__ = [
    "AESCBCCipher", "EnvelopeCipher", "EnvelopePrivateKey", "new_iv", "new_key", "validate",
    "CallChannel", "CallState", "Cause", "Conference", "Controller", "Error", "Hangup", "Leg",
    "MusicOnHold", "RecorderState", "UASWholeCallFileRecorder", "WholeCallRecorder",
]
