"""Senders written from the protocols' public descriptions: Twilio Media Streams messages
(JSON over a WebSocket, aiohttp's client), L16 binary frames, AudioSocket TCP frames."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
import uuid
import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # a mu-law decoder independent of ours

        def ulaw(payload: bytes) -> np.ndarray:
            return np.frombuffer(audioop.ulaw2lin(payload, 2), np.int16)
    except ImportError:  # Python 3.13+
        pass

SID = "MZ00000000000000000000000000000000"


def ulaw_payload(rng: np.random.Generator, n: int = 160) -> bytes:
    """Random mu-law codes that never decode to 0 (0x7f and 0xff do), so a leg's start is findable."""
    codes = rng.integers(0, 254, n)
    codes[codes >= 0x7F] += 1
    return codes.astype(np.uint8).tobytes()


def connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start(tracks: tuple[str, ...] = ("inbound", "outbound"), **params: str) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": {
        "accountSid": "AC0", "streamSid": SID, "callSid": "CA0", "tracks": list(tracks), "customParameters": params,
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})


def media(seq: int, track: str, chunk: int, ts_ms: int, payload: bytes) -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": SID, "media": {
        "track": track, "chunk": str(chunk), "timestamp": str(ts_ms), "payload": base64.b64encode(payload).decode()}})


def dtmf(track: str, digit: str) -> str:
    return json.dumps({"event": "dtmf", "streamSid": SID, "sequenceNumber": "9", "dtmf": {"track": track, "digit": digit}})


def stop() -> str:
    return json.dumps({"event": "stop", "sequenceNumber": "999", "streamSid": SID,
                       "stop": {"accountSid": "AC0", "callSid": "CA0"}})


async def paced_ws(url: str, slots: list[list[str | bytes]], period: float = 0.02, close: bool = True) -> dict:
    """Send slot k's messages at t0 + k * period over one WebSocket; returns how it closed."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(url, autoping=True) as ws:
        t0 = time.monotonic()
        for k, messages in enumerate(slots):
            delay = t0 + k * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for m in messages:
                if ws.closed:
                    break
                try:
                    if isinstance(m, str):
                        await ws.send_str(m)
                    else:
                        await ws.send_bytes(m)
                except ConnectionError:  # the server closed it (bad input): what it said is read below
                    break
        if close:
            await ws.close()
        else:
            msg = await ws.receive(timeout=10)  # the server closes
            return {"type": msg.type.name, "code": msg.data, "reason": msg.extra}
        return {"type": "CLOSED", "code": ws.close_code, "reason": None}


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client WebSocket frame written from RFC 6455 5.2, masked with a random key."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def as_frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BH", kind, len(payload)) + payload


def as_uuid(u: str) -> bytes:
    return as_frame(0x01, uuid.UUID(u).bytes)


async def paced_tcp(host: str, port: int, slots: list[list[bytes]], period: float = 0.02, wait: bool = True) -> bytes:
    """Send slot k's frames at t0 + k * period over one TCP connection; returns what came back
    until the server closed (or 5 s passed); `wait` False closes right after the last frame."""
    reader, writer = await asyncio.open_connection(host, port)
    t0 = time.monotonic()
    try:
        for k, frames in enumerate(slots):
            delay = t0 + k * period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for f in frames:
                writer.write(f)
            await writer.drain()
        if not wait:
            return b""
        try:
            return await asyncio.wait_for(reader.read(), 5)
        except TimeoutError:
            return b"<open>"
    except ConnectionError:
        return b"<reset>"
    finally:
        writer.close()
