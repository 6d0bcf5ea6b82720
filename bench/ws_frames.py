"""CPU per WebSocket frame of the stream process's read path: `ingest.websocket` (the adapter
over the `websockets` library's sans-I/O server) fed one Twilio `media` frame per read, as
`data_received` sees them at 20 ms per message. Optionally the same frames through the
hand-written parser it replaced (commit b0f9f3c: `FrameParser.feed` per read plus the per-tick
numpy `unmask_batch` over 600 frames), loaded from a file, for the before/after ratio.

Pure CPU (`time.process_time()`, best of `--repeat`), no sockets: what the end-to-end
`wholecall stress --media twilio` cannot separate on a shared machine.

    python bench/ws_frames.py [--frames 60000] [--zero-mask]
    git show b0f9f3c:ingest/websocket.py > /tmp/old_ws.py && python bench/ws_frames.py --old /tmp/old_ws.py
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import struct
import time

from wholecall.ingest import websocket as wsp

UPGRADE = (b"GET /v1/media/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def client_frame(payload: bytes, mask: bytes) -> bytes:
    """A masked text frame (RFC 6455 5.2)."""
    n = len(payload)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def twilio_media() -> bytes:
    return json.dumps({"event": "media", "sequenceNumber": "4", "streamSid": "MZ" + "0" * 32,
                       "media": {"track": "inbound", "chunk": "3", "timestamp": "40",
                                 "payload": base64.b64encode(os.urandom(160)).decode()}},
                      separators=(",", ":")).encode()


def adapter(reads: list[bytes]) -> float:
    ws = wsp.ServerConnection(64 * 1024)
    assert ws.opening(UPGRADE) == "/v1/media/x"
    ws.accept()
    ws.out()
    got = 0
    t = time.process_time()
    for r in reads:
        got += len(ws.receive(r))
        ws.out()
    spent = time.process_time() - t
    assert got == len(reads) and ws.error is None
    return spent


def old(path: str, reads: list[bytes], tick: int = 600) -> float:
    spec = importlib.util.spec_from_file_location("old_ws", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    parser = mod.FrameParser(64 * 1024)
    batch: list = []
    got = 0
    t = time.process_time()
    for k, r in enumerate(reads):
        for _, _, payload, mask in parser.feed(r):
            batch.append((payload, mask))
        if k % tick == tick - 1:
            got += len(mod.unmask_batch(batch))
            batch = []
    got += len(mod.unmask_batch(batch))
    spent = time.process_time() - t
    assert got == len(reads)
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--zero-mask", action="store_true", help="mask key 0 (what the stress generator sends)")
    ap.add_argument("--old", help="a copy of the replaced ingest/websocket.py, for the before figure")
    a = ap.parse_args()
    text = twilio_media()
    reads = [client_frame(text, b"\0\0\0\0" if a.zero_mask else os.urandom(4)) for _ in range(a.frames)]
    new_s = min(adapter(reads) for _ in range(a.repeat))
    print(f"frame {len(reads[0])} bytes, {a.frames} frames, best of {a.repeat}")
    print(f"adapter over websockets: {new_s / a.frames * 1e6:.2f} us/frame")
    if a.old:
        old_s = min(old(a.old, reads) for _ in range(a.repeat))
        print(f"hand-written parser + batch unmask: {old_s / a.frames * 1e6:.2f} us/frame; ratio new/old {new_s / old_s:.2f}")


if __name__ == "__main__":
    main()
