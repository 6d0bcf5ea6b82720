"""The public API of wholecall: `Controller`, `CallChannel`, `WholeCallRecorder`, `Hangup`, `Error`."""

from .channel import CallChannel, Leg
from .controller import Controller
from .errors import Error, Hangup
from .media import Conference, MusicOnHold
from .recorder import WholeCallRecorder
from .states import CallState, Cause, RecorderState

__all__ = [
    "CallChannel", "CallState", "Cause", "Conference", "Controller", "Error", "Hangup", "Leg",
    "MusicOnHold", "RecorderState", "WholeCallRecorder",
]
