"""SRTP with SDES keys (RFC 4568 key exchange, RFC 3711 protection) through libsrtp (`pylibsrtp`).

Why libsrtp: the cipher and authentication of SRTP, its key derivation and its replay
window are security code that a recorder must not write itself; libsrtp is what Asterisk,
FreeSWITCH and rtpengine use. This module owns only the translation from the API's
``{"suite": ..., "key": base64(master key || master salt)}`` to a libsrtp session, with
errors that say what is wrong, and the split of libsrtp's failures into "replayed" (a
duplicate, which the playout core would have dropped anyway) and "not authentic".
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

import pylibsrtp


class SrtpError(ValueError):
    """Bad SRTP parameters, or a packet that did not authenticate or decrypt."""


class SrtpReplay(SrtpError):
    """libsrtp's replay window rejected a packet: a duplicate or one too old to check."""


@dataclass(frozen=True, slots=True)
class Suite:
    """One SDES crypto suite: the libsrtp profile and the master key and salt sizes it needs."""

    name: str
    profile: int
    key_length: int
    salt_length: int

    @property
    def master_length(self) -> int:
        return self.key_length + self.salt_length


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("AES_CM_128_HMAC_SHA1_80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
        Suite("AES_CM_128_HMAC_SHA1_32", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 16, 14),
        Suite("AEAD_AES_128_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
        Suite("AEAD_AES_256_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32, 12),
    )
}
"""Suites by their SDES (RFC 4568 / RFC 7714) names."""


def parse_sdes(params: Mapping[str, object]) -> tuple[Suite, bytes]:
    """``{"suite": name, "key": base64}`` -> (suite, master key || salt), checking both.

    The key may be given as SDP writes it (``inline:<base64>`` with an optional
    ``|lifetime``, which libsrtp's defaults cover); an MKI (``|n:len``) is refused because
    a single-key session cannot honour it.
    """
    suite_name = params.get("suite")
    key_text = params.get("key")
    unknown = set(params) - {"suite", "key"}
    if unknown:
        raise SrtpError(f"unknown SRTP parameter(s): {', '.join(sorted(unknown))}")
    if not isinstance(suite_name, str) or suite_name not in SUITES:
        raise SrtpError(f"SRTP suite {suite_name!r} is not supported (supported: {', '.join(SUITES)})")
    suite = SUITES[suite_name]
    if not isinstance(key_text, str) or not key_text:
        raise SrtpError("SRTP key must be a base64 string of the master key and salt")
    text = key_text.removeprefix("inline:")
    text, *extras = text.split("|")
    for extra in extras:
        if ":" in extra:
            raise SrtpError(f"SRTP key has an MKI ({extra!r}), which is not supported")
    try:
        master = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SrtpError("SRTP key is not valid base64") from None
    if len(master) != suite.master_length:
        raise SrtpError(
            f"SRTP key is {len(master)} bytes, {suite.name} needs {suite.master_length} "
            f"({suite.key_length}-byte key + {suite.salt_length}-byte salt)"
        )
    return suite, master


def _session(params: Mapping[str, object], ssrc_type: int) -> pylibsrtp.Session:
    suite, master = parse_sdes(params)
    policy = pylibsrtp.Policy(key=master, ssrc_type=ssrc_type, srtp_profile=suite.profile)
    return pylibsrtp.Session(policy=policy)


class SrtpReceiver:
    """Unprotects one inbound SRTP stream direction (any SSRC), as a leg's RTP endpoint needs."""

    __slots__ = ("_session", "suite")

    def __init__(self, params: Mapping[str, object]) -> None:
        self.suite = parse_sdes(params)[0]
        self._session = _session(params, pylibsrtp.Policy.SSRC_ANY_INBOUND)

    def unprotect(self, packet: bytes) -> bytes:
        """SRTP packet -> the RTP packet; `SrtpReplay` for a replayed one, `SrtpError` otherwise."""
        try:
            return self._session.unprotect(packet)
        except pylibsrtp.Error as exc:
            text = str(exc)
            if "replay" in text:
                raise SrtpReplay(f"SRTP packet rejected: {text}") from None
            raise SrtpError(f"SRTP packet rejected: {text}") from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP packet -> the RTCP packet (same errors as `unprotect`)."""
        try:
            return self._session.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTCP packet rejected: {exc}") from None


class SrtpSender:
    """Protects outbound RTP (the load generator's and the tests' side of a leg)."""

    __slots__ = ("_session", "suite")

    def __init__(self, params: Mapping[str, object]) -> None:
        self.suite = parse_sdes(params)[0]
        self._session = _session(params, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)

    def protect(self, packet: bytes) -> bytes:
        return self._session.protect(packet)
