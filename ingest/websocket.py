"""The server side of RFC 6455 WebSockets for the stream process, without I/O: a thin adapter
over the `websockets` library's sans-I/O `ServerProtocol`.

Why the library: the opening handshake, frame parsing, unmasking (in C), ping/pong, the
close handshake and the protocol-error and size-limit closes (1002, 1009) are what it does,
well tested; we hand-wrote them before. Why an adapter: the stream process needs four things
the library leaves to its caller, and they are all that is here:

- the request's path is routed to a call *before* the 101 goes out, so a URL no call has is
  refused with a plain HTTP status (`opening`, then `accept` or `refuse`);
- a request that is not HTTP at all gets a 400 reply (the library only closes), a wrong
  ``Sec-WebSocket-Version`` a 426 with the version spoken (RFC 6455 4.2.2);
- fragments are joined into whole messages (the library hands out frames);
- a protocol violation is reported as ``(close code, reason)`` so the caller can count and
  log it and end the call; the library has already sent that close frame.

Everything goes through `out()`: the bytes to write and whether the socket should close after
them (the library's end-of-stream marker; a server closes the TCP connection itself).
"""

from __future__ import annotations

import logging
from typing import NamedTuple, cast

from websockets.exceptions import InvalidHeader, PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

_quiet = logging.getLogger("wholecall.websocket")
"""The library's per-connection INFO lines ("connection open", "... closed") repeat ours; its
warnings and errors still show."""
_quiet.setLevel(logging.WARNING)

TEXT, BINARY = Opcode.TEXT, Opcode.BINARY


class Refusal(NamedTuple):
    """An opening request refused: the HTTP status sent and why (for the log)."""

    status: int
    reason: str


class ServerConnection:
    """One server-side WebSocket connection: bytes in, whole messages and bytes to write out.

    `max_size` is the largest message accepted (fragments summed); a larger one closes the
    connection with 1009.
    """

    __slots__ = ("_closing", "_frag", "_frag_op", "_p", "_reply", "_response", "error")

    def __init__(self, max_size: int) -> None:
        self._p = ServerProtocol(max_size=max_size, logger=_quiet)
        self._response: Response | None = None
        self._closing = False
        """We sent our close: messages after it are dropped."""
        self._reply = b""
        """Our 400 to a request the library could not parse (it would only close)."""
        self._frag_op: Opcode | None = None
        self._frag: list[bytes] = []
        self.error: tuple[int, str] | None = None
        """``(close code, reason)`` once the peer broke the protocol (the close frame is sent)."""

    # -- the opening handshake --------------------------------------------------------------

    def opening(self, data: bytes) -> str | Refusal | None:
        """Bytes of the opening request in. Returns the request path (query cut off) once the
        request is a valid upgrade (then call `accept` or `refuse`), a `Refusal` already
        queued in `out()` when it is not, None while the request is incomplete."""
        p = self._p
        p.receive_data(data)
        for event in p.events_received():
            if isinstance(event, Request):
                response = p.accept(event)
                if response.status_code == 101:
                    self._response = response
                    return event.path.split("?", 1)[0]
                exc = p.handshake_exc
                if isinstance(exc, InvalidHeader) and exc.name == "Sec-WebSocket-Version" and exc.value:
                    response.status_code, response.reason_phrase = 426, "Upgrade Required"
                    response.headers["Sec-WebSocket-Version"] = "13"
                p.send_response(response)
                return Refusal(response.status_code, _why(p.handshake_exc, response))
        if p.handshake_exc is not None:  # not an HTTP request: the library closes without a reply
            reply = p.reject(400, f"Failed to open a WebSocket connection: {p.handshake_exc}.\n")
            self._reply = reply.serialize()
            return Refusal(400, _why(p.handshake_exc, reply))
        return None

    def accept(self) -> None:
        """The 101 reply to the request `opening` returned the path of; the connection is open."""
        assert self._response is not None, "accept() before opening() returned a path"
        self._p.send_response(self._response)
        self._response = None

    def refuse(self, status: int, text: str) -> None:
        """A plain-text HTTP reply instead of the 101 (the request's path names nothing)."""
        self._response = None
        self._p.send_response(self._p.reject(status, text + "\n"))

    # -- messages ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[tuple[Opcode, bytes]]:
        """Bytes from the peer in, whole messages out as ``(TEXT or BINARY, payload)``.

        Pings are answered and the peer's close is echoed (in `out()`); messages arriving
        after we started closing are dropped. A protocol violation sets `error` and ends
        the parsing; the messages before it are still returned."""
        p = self._p
        closing = self._closing  # we had sent our close before these bytes
        p.receive_data(data)
        out: list[tuple[Opcode, bytes]] = []
        for frame in cast("list[Frame]", p.events_received()):  # once open, only frames come
            op = frame.opcode
            payload: bytes = frame.data  # type: ignore[assignment]  # a client's frame is unmasked into new bytes
            if frame.fin and (op is TEXT or op is BINARY):  # the common case
                if not closing:
                    out.append((op, payload))
            elif op is Opcode.CONT:
                self._frag.append(payload)
                if frame.fin:
                    if not closing and self._frag_op is not None:
                        out.append((self._frag_op, b"".join(self._frag)))
                    self._frag_op, self._frag = None, []
            elif op is TEXT or op is BINARY:
                self._frag_op, self._frag = op, [payload]
        if p.parser_exc is not None and self.error is None and p.close_sent is not None:
            self.error = (p.close_sent.code, _reason(p.parser_exc))
        return out

    def close(self, code: int, reason: str = "") -> None:
        """Our side closes with `code` (queued in `out()`); nothing if a close was already sent."""
        self._closing = True
        if self._p.state is State.OPEN:
            cut = reason.encode()[:123].decode(errors="ignore")  # a control frame carries 125 bytes
            self._p.send_close(code, cut)

    @property
    def open(self) -> bool:
        return self._p.state is State.OPEN

    @property
    def peer_code(self) -> int | None:
        """The close code the peer sent (1005 for a close frame without one), None if none came."""
        rcvd = self._p.close_rcvd
        return None if rcvd is None else int(rcvd.code)

    def out(self) -> tuple[bytes, bool]:
        """``(bytes to write, close the socket after them)``."""
        writes = self._p.data_to_send()
        if not writes and not self._reply:  # the common case: nothing to answer
            return b"", False
        if self._reply:
            writes.insert(0, self._reply)
            self._reply = b""
        if not writes:
            return b"", False
        return b"".join(writes), SEND_EOF in writes


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PayloadTooBig):
        return f"message too big: {exc}"
    return f"protocol error: {exc}"


def _why(exc: BaseException | None, response: Response) -> str:
    if exc is None:
        return response.reason_phrase
    text, cause = str(exc), exc.__cause__
    while cause is not None:
        text += f"; {cause}"
        cause = cause.__cause__
    return text
