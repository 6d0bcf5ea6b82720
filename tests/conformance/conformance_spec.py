"""Every requirement sentence of the WholeCallRecorder spec, by section, verbatim.

The conformance tests quote these in their docstrings as ``<section>: "<sentence>"``;
`test_conformance_trace.py` checks that (a) every sentence here is quoted by at least
one test, (b) every test quotes at least one sentence, and (c) when the spec text is
at hand (``../shared/spec/WholeCallRecorder.txt`` beside the repository, or
``$WHOLECALL_SPEC``), every sentence here is in the spec and every sentence of the
spec is here. Usage examples are listed as ``"Usage example:"``: their tests run the
example's code.
"""

from __future__ import annotations

import os
import re

# Argument descriptions shared by record() and start() (start() words max silence differently).
_ARGS_COMMON = (
    "the name of the file to record.",
    "the file format to use. Default is alaw.",
    "the rate at which to record. Default is 8000.",
    "the maximum size allowed for the file. Default is 0 bytes (no limit).",
    "the amount of silence (in milliseconds) to wait for audio before starting the recording. "
    "Default is 0 seconds (no limit).",
    "option to eliminate DTMF from the recording. Default is True.",
    "option to set the recording mode. Default is mixed.",
    "if the recorded file is to be encrypted, supply the cipher so it can be encrypted when recording is completed.",
)

_RECORD_START_COMMON = (
    "If the call state is IDLE, this function will raise a Hangup exception.",
    "If the call state is not IDLE but also not ANSWERED, this function will raise an Error exception.",
    "A whole call recorder cannot be started if the channel is currently using a transmitter function "
    "such as play() or play_dtmf().",
    "Additionally, a whole call recorder cannot be started if the call channel is connected to another "
    "channel, if it is part of a conference or if it has been added to a music on hold resource.",
    "The whole call recorder must be started before these other functions are used.",
    "The optional argument file_format is the audio codec in which to record the media.",
    "The default is alaw (G.711 A-law), other options are ulaw (G.711 mu-law), oki (OKI ADPCM), "
    "ima (IMA ADPCM) s16bit (signed 16-bit PCM) and u8bit (unsigned 8-bit PCM).",
    "Of those, G.711 A-law, G.711 mu-law and 16-bit PCM provide the best quality since the first two "
    "match those used on calls, and they can convert to the last without degradation.",
    "The optional argument rate is the recording rate in Hz.",
    "The default is 8000, other options are 6000, 11000 and 11025.",
    "Of those, 8000 provides the best quality since it matches the sampling rate used on calls.",
    "The recording will continue until one of the termination conditions applies.",
    "This could be that the maximum file size (max_bytes) has been reached; the silence timeout "
    "(milliseconds_max_silence) has been triggered or the initial silence timeout "
    "(milliseconds_initial_silence) has been triggered.",
    "To turn off the termination conditions, max_bytes=0 means no limit; milliseconds_max_silence=0 "
    "means no silence timeout and milliseconds_initial_silence=0 means no initial silence timeout.",
    "The optional argument recording_mode is either mixed or separate.",
    "The default is mixed, which records a single channel containing a mix of both sides of the conversation.",
    "separate records each side of the conversation to a separate audio channel in the WAV file.",
    "When recording separate channels file_format must be one of alaw, ulaw, u8bit and s16bit , and "
    "max_bytes, milliseconds_max_silence and milliseconds_initial_silence are ignored.",
    "Usage example:",
)

SPEC: dict[str, tuple[str, ...]] = {
    "UASWholeCallFileRecorder": (
        "The CallChannel object uses the class described below to provide whole call recording functionality.",
        "The CallChannel object has a public property called WholeCallRecorder of this type.",
    ),
    "Cause": (
        "Once a record job has ended and the record state has returned to IDLE or ERROR, "
        "the cause will be one of these.",
        "record has stopped due to an error.",
        "record has stopped due to a silence timeout.",
        "record has stopped due to the maximum file size being reached.",
        "record has been aborted (probably because stop was called).",
        "record ended due to a call hangup.",
        "record stopped because a timer has expired.",
        "record is in progress or record has not occurred.",
        "Usage example:",
    ),
    "State": (
        "The record state can be checked to determine whether a record job is in progress.",
        "When a record job ends, the record termination cause can be checked to find the reason why.",
        "recording is in progress.",
        "recording is not in progress.",
        "a record job failed",
        "Usage example:",
    ),
    "cause()": (
        "This function will return a cause.",
        "When a particular job terminates, the reason why can be requested by calling this function.",
        "If this function is called while a job is still running, the cause will be NONE.",
    ),
    "record()": (
        "record(filename, file_format='alaw', rate=8000, seconds_timeout=None, max_bytes=0, "
        "milliseconds_max_silence=0, milliseconds_initial_silence=0, dtmf_elim=True, "
        "recording_mode='mixed', cipher=None)",
        "Record an entire call.",
        *_ARGS_COMMON,
        "the amount of time allocated to the record job. Default is None seconds (no timeout).",
        "the amount of silence (in milliseconds) after which to stop recording. Default is 0 seconds (no limit).",
        "This function is provided to allow the recording of an entire call (both sides of the conversation) "
        "to a WAV file.",
        "If the whole call recorder state is already RECORDING, this function will raise an Error exception.",
        *_RECORD_START_COMMON,
        "This function will block until the recording has finished or a timeout (seconds_timeout) has expired.",
        "Upon return, this function will return a termination cause.",
    ),
    "start()": (
        "start(filename, file_format='alaw', rate=8000, max_bytes=0, milliseconds_max_silence=0, "
        "milliseconds_initial_silence=0, dtmf_elim=True, recording_mode='mixed', cipher=None)",
        "Begin the recording of a media file.",
        *_ARGS_COMMON,
        "the amount of silence after which to stop recording. Default is 0 seconds (no limit).",
        "This function is provided to start the recording of an entire call (both sides of the conversation) "
        "to a WAV file.",
        "If the whole call record state is already RECORDING, this function will raise an Error exception.",
        *_RECORD_START_COMMON,
        "This function will block until the recording has started or a timeout has expired.",
        "Upon return, this function will return True for success, otherwise False.",
    ),
    "state()": (
        "This function will return the current state.",
        "When a particular job is busy, its status can be tracked by calling this function.",
        "If this function is called when no job is in progress, the state will be IDLE.",
    ),
    "stop()": (
        "Stop a whole call record job.",
        "If the call state is IDLE, this function will raise a Hangup exception.",
        "If the call state is not IDLE but also not ANSWERED, this function will raise a Error exception.",
        "If the whole call recorder state is not RECORDING, this function will simply return True.",
        "This function will block until the record job terminates or a timeout expires.",
        "Upon return, this method will return True for success, otherwise False.",
        "Usage example:",
    ),
    "wait_until_finished()": (
        "wait_until_finished(seconds_timeout=120)",
        "Wait until the current whole call recording job is complete.",
        "the amount of time allocated to wait for the record job to terminate. Default is 120 seconds.",
        "If the call state is IDLE, this function will raise a Hangup exception.",
        "If the call state is not IDLE but also not ANSWERED, this function will raise an Error exception.",
        "This function will block until the recorder terminates or the timeout expires.",
        "Giving a value of None for seconds_timeout will enable an infinite wait.",
        "If the timeout does expire, a cause of TIMEOUT will be returned.",
        "Upon return, this function will return a termination cause.",
        "Usage example:",
    ),
}

#: Text of the spec that states no requirement, and why it is not tested.
NOT_REQUIREMENTS: dict[str, str] = {
    "Please see the tutorial for an example on how to use this class.": "points at documentation",
}

#: Headings, bullets and names that structure the spec's prose (not sentences).
_FILLER = re.compile(
    r"•|Required argument:|Optional argument:|Recording termination causes:|Record states:"
    r"|The WholeCallRecorder property|\b(?:ERROR|SILENCE|SIZE|ABORTED|HANGUP|TIMEOUT|NONE|RECORDING|IDLE)\b"
    r"|\b(?:filename|file_format|rate|seconds_timeout|max_bytes|milliseconds_max_silence"
    r"|milliseconds_initial_silence|dtmf_elim|recording_mode|cipher)\b"
)

_HEADING = re.compile(
    r"^(The WholeCallRecorder property|class (\w+)|(cause|record|start|state|stop|wait_until_finished)\(.*\))$",
    re.M,
)


def normalize(text: str) -> str:
    """Whitespace collapsed to single spaces (docstrings wrap sentences across lines)."""
    return " ".join(text.split())


def spec_path() -> str | None:
    """The spec text, if this checkout has it beside it (or $WHOLECALL_SPEC names it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("WHOLECALL_SPEC", ""),
                  os.path.join(here, "..", "..", "..", "shared", "spec", "WholeCallRecorder.txt")]
    for c in candidates:
        if c and os.path.isfile(c):
            return c
    return None


def spec_sections(text: str) -> dict[str, str]:
    """Section name (as keys of SPEC) -> its text, heading line included."""
    heads = list(_HEADING.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        if m.group(2):
            name = m.group(2)
        elif m.group(3):
            name = m.group(3) + "()"
        else:
            name = "property"
        out[name] = text[m.start():end]
    return out


def leftover(section_text: str, sentences: tuple[str, ...]) -> str:
    """What remains of a section's prose once its listed sentences and filler are removed."""
    prose = section_text.split("Usage example:")[0]
    norm = normalize(prose)
    for s in sorted((*sentences, *NOT_REQUIREMENTS), key=len, reverse=True):
        norm = norm.replace(s, " ")
    norm = re.sub(r"^(?:class \w+|\w+\(\))", " ", norm.strip())  # the section's own heading
    return normalize(_FILLER.sub(" ", norm))
