"""A direct TCP link from an API process to a SagaHost, beside Ray's actor calls.

Why it exists: a start's hand-over and the finish feed's long poll are the two
calls an API process makes per saga (batched under load). As Ray actor calls they
cost about 1.5 ms of CPU each (argument binding, pickling, Ray's IO and task
threads) and a 2.0 ms round trip on this project's 2-core machine; over one kept-open
TCP connection with length-prefixed frames, 0.07 ms and 0.23 ms
(``python -m bench.ray_call_cost``). Ray keeps
everything else: creating, finding, restarting and draining hosts, and every
other call. An API process learns a host's link (address and key) from the answer
to its first hand-over, which travels over Ray's authenticated channel.

Contract of :class:`LinkServer` (in a host):
- Owns one listening socket on the host's node address (port chosen by the OS)
  and a random key made at start. The key leaves the process only inside hand-over
  answers over Ray; it is never journaled, logged, or put in an API response.
- A connection whose first frame is not the key is closed. After that, each
  request runs in its own task and its answer is matched to it by id, so a long
  poll does not hold up a hand-over.
- Serves what the host's Ray methods serve, with the same semantics (the handlers
  are the same calls); it adds no state of its own.

Contract of :class:`LinkClient` (in an API process):
- Owns one connection to one host incarnation, opened on first use, multiplexing
  every call in flight.
- Retries nothing: a connection that breaks fails every call in flight with
  :class:`LinkDown` (``sent``: the host may have acted on it), and for
  ``RECONNECT_SECONDS`` after that new calls fail at once. The caller falls back to the
  Ray call: a finish-feed answer is only a hint, and a hand-over that may have arrived
  is repeated without its events, so the host reads the journal (an execution it
  already runs or that already ended is left alone).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[bytes]]
# Frame: header length, body length (big-endian u32), the JSON header, the body.
PREFIX = struct.Struct(">II")
MAX_HEADER = 4_096
MAX_BODY = 256 * 1024 * 1024
MAX_HELLO = 256  # what an unauthenticated peer may make the server read
CONNECT_SECONDS = 1.0
RECONNECT_SECONDS = 5.0


class LinkDown(ConnectionError):
    """The link to a host is not usable now; the caller falls back to Ray.

    ``sent``: the call had been written when the link broke, so the host may have
    acted on it (a retry over Ray must be safe to repeat)."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class LinkRefused(RuntimeError):
    """The host answered the call with an error (the same call over Ray would raise)."""


def frame(header: Mapping[str, Any], body: bytes = b"") -> bytes:
    encoded = orjson.dumps(header)
    return PREFIX.pack(len(encoded), len(body)) + encoded + body


async def read_frame(reader: asyncio.StreamReader,
                     max_body: int = MAX_BODY) -> tuple[dict[str, Any], bytes]:
    header_size, body_size = PREFIX.unpack(await reader.readexactly(PREFIX.size))
    if header_size > MAX_HEADER or body_size > max_body:
        raise ValueError(f"frame too large: header {header_size} B, body {body_size} B")
    header = orjson.loads(await reader.readexactly(header_size))
    if not isinstance(header, dict):
        raise ValueError("a frame's header must be a JSON object")
    return header, await reader.readexactly(body_size)


class LinkServer:
    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)
        self.key = secrets.token_hex(16)
        self.address: str | None = None  # "ip:port" once listening
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.served = 0  # calls answered, errors included

    async def start(self, bind: str) -> str:
        self._server = await asyncio.start_server(self._serve, host=bind, port=0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{bind}:{port}"
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            hello, _ = await read_frame(reader, max_body=MAX_HELLO)
            offered = str(hello.get("key", "")).encode()  # bytes: any text compares
            if not hmac.compare_digest(offered, self.key.encode()):
                log.warning("host link: a connection from %s offered a wrong key",
                            writer.get_extra_info("peername"))
                return
            await self._requests(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
            log.debug("host link connection ended: %r", error)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                header, body = await read_frame(reader)
                call = asyncio.create_task(self._answer(writer, header, body))
                calls.add(call)
                call.add_done_callback(calls.discard)
        finally:
            for call in calls:
                call.cancel()

    async def _answer(self, writer: asyncio.StreamWriter, header: dict[str, Any],
                      body: bytes) -> None:
        call_id = header.get("id")
        handler = self._handlers.get(str(header.get("op")))
        try:
            if handler is None:
                raise LookupError(f"no such operation on the host link: {header.get('op')!r}")
            answer = frame({"id": call_id}, await handler(body))
        except Exception as error:  # the caller gets it, as a Ray call would raise it
            log.debug("host link call %r failed", header.get("op"), exc_info=True)
            answer = frame({"id": call_id, "error": f"{type(error).__name__}: {error}"})
        self.served += 1
        if not writer.is_closing():
            writer.write(answer)


class LinkClient:
    def __init__(self, address: str, key: str, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.address, self._key = address, key
        self._clock = clock
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._ids = itertools.count()
        self._down_until = 0.0
        self._closed = False

    def same(self, address: str, key: str) -> bool:
        return self.address == address and self._key == key

    async def call(self, op: str, body: bytes) -> bytes:
        """The handler's answer; :class:`LinkDown` if the link is not usable,
        :class:`LinkRefused` if the host's handler raised."""
        writer = await self._connected()
        call_id = next(self._ids)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            writer.write(frame({"id": call_id, "op": op}, body))
            return await future
        except LinkDown as error:
            raise LinkDown(str(error), sent=True) from error
        finally:
            self._pending.pop(call_id, None)

    def close(self) -> None:
        self._closed = True
        self._broken(LinkDown(f"the link to {self.address} was closed"))

    async def _connected(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            if self._closed or self._clock() < self._down_until:
                raise LinkDown(f"the link to {self.address} is down")
            try:
                ip, port = self.address.rsplit(":", 1)
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(ip, int(port)), CONNECT_SECONDS)
                writer.write(frame({"key": self._key}))
            except (OSError, TimeoutError, ValueError) as error:
                self._down_until = self._clock() + RECONNECT_SECONDS
                raise LinkDown(f"cannot open the link to {self.address}: {error!r}") from error
            self._writer = writer
            self._reading = asyncio.create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header, body = await read_frame(reader)
                future = self._pending.get(int(header["id"]))
                if future is None or future.done():
                    continue
                if "error" in header:
                    future.set_exception(LinkRefused(str(header["error"])))
                else:
                    future.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError) as error:
            self._down_until = self._clock() + RECONNECT_SECONDS
            self._broken(LinkDown(f"the link to {self.address} broke: {error!r}"))

    def _broken(self, error: LinkDown) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
