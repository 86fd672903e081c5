"""The host link on real loopback sockets: framing, keys, concurrency, failures, and one
host core served over it (no Ray; the pool's use of it is in ``test_host_link_stack.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from coordinator.core import events as ev
from coordinator.host_config import HostConfig
from coordinator.host_core import HostCore
from coordinator.host_link import (
    MAX_HELLO,
    RECONNECT_SECONDS,
    LinkClient,
    LinkDown,
    LinkRefused,
    LinkServer,
    frame,
)
from coordinator.journal.base import Journal
from coordinator.link_codec import (
    FINISHED_SINCE,
    START_MANY,
    decode_answers,
    decode_batch,
    decode_feed,
    encode_batch,
    encode_poll,
    host_handlers,
)
from coordinator.pool import without_events
from tests.runtime.hostcore import charges, create, events_of
from tests.runtime.test_opening_round import definition_of


async def echo(body: bytes) -> bytes:
    return b"echo:" + body


async def slow(body: bytes) -> bytes:
    await asyncio.sleep(float(body))
    return b"slow done"


async def broken(body: bytes) -> bytes:
    raise ValueError(f"cannot take {body!r}")


@pytest.fixture
async def server() -> AsyncIterator[LinkServer]:
    link = LinkServer({"echo": echo, "slow": slow, "broken": broken})
    await link.start("127.0.0.1")
    yield link
    await link.close()


def client_of(server: LinkServer, key: str | None = None) -> LinkClient:
    assert server.address is not None
    return LinkClient(server.address, key or server.key)


async def test_a_call_gets_its_handlers_answer(server: LinkServer) -> None:
    client = client_of(server)
    assert await client.call("echo", b"hello") == b"echo:hello"
    assert await client.call("echo", b"") == b"echo:"
    assert server.served == 2
    client.close()


async def test_calls_in_flight_are_answered_each_by_its_own_id(server: LinkServer) -> None:
    """A long call (a finish-feed poll) does not hold up the ones sent after it."""
    client = client_of(server)
    long = asyncio.ensure_future(client.call("slow", b"0.5"))
    quick = await asyncio.gather(*(client.call("echo", str(n).encode()) for n in range(50)))
    assert quick == [f"echo:{n}".encode() for n in range(50)]
    assert not long.done()
    assert await long == b"slow done"
    client.close()


async def test_a_handler_that_raises_is_refused_with_its_error(server: LinkServer) -> None:
    client = client_of(server)
    with pytest.raises(LinkRefused, match="ValueError: cannot take b'x'"):
        await client.call("broken", b"x")
    with pytest.raises(LinkRefused, match="no such operation on the host link: 'nothing'"):
        await client.call("nothing", b"")
    assert await client.call("echo", b"still up") == b"echo:still up"  # same connection
    client.close()


async def test_a_wrong_key_gets_no_answer_and_the_link_is_down(server: LinkServer) -> None:
    client = client_of(server, key="0" * 32)
    with pytest.raises(LinkDown, match="broke"):
        await client.call("echo", b"hello")
    assert server.served == 0
    # Down for a while: the caller goes to Ray at once instead of reconnecting each time.
    with pytest.raises(LinkDown, match="is down"):
        await client.call("echo", b"hello")


async def test_a_key_that_is_not_ascii_is_just_wrong(
        server: LinkServer, caplog: pytest.LogCaptureFixture) -> None:
    client = client_of(server, key="ключ")
    with pytest.raises(LinkDown):
        await client.call("echo", b"hello")
    assert server.served == 0
    assert "offered a wrong key" in caplog.text  # refused as such, not a crash in the check


async def test_an_unauthenticated_peer_cannot_make_the_server_read_much(
        server: LinkServer) -> None:
    assert server.address is not None
    ip, port = server.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(ip, int(port))
    writer.write(frame({"key": "x"}, b"\0" * (MAX_HELLO + 1)))
    assert await reader.read() == b""  # closed without reading the body
    writer.close()
    assert server.served == 0


async def test_a_host_gone_fails_calls_in_flight_then_the_link_comes_back_later(
        server: LinkServer) -> None:
    now = [100.0]
    assert server.address is not None
    client = LinkClient(server.address, server.key, clock=lambda: now[0])
    pending = asyncio.ensure_future(client.call("slow", b"30"))
    await asyncio.sleep(0.1)
    await server.close()
    with pytest.raises(LinkDown) as cut:
        await pending
    assert cut.value.sent  # written before the host went: it may have acted on it
    with pytest.raises(LinkDown) as down:
        await client.call("echo", b"x")
    assert not down.value.sent
    # A host restarted on the same address (same key here, to show the reconnect).
    again = LinkServer({"echo": echo})
    again.key = server.key
    port = int(server.address.rsplit(":", 1)[1])
    again._server = await asyncio.start_server(again._serve, "127.0.0.1", port)
    now[0] += RECONNECT_SECONDS + 0.1
    assert await client.call("echo", b"x") == b"echo:x"
    client.close()
    await again.close()


async def test_a_closed_client_refuses_new_calls(server: LinkServer) -> None:
    client = client_of(server)
    assert await client.call("echo", b"1") == b"echo:1"
    client.close()
    with pytest.raises(LinkDown):
        await client.call("echo", b"2")


def test_the_feeds_answer_comes_back_as_the_feed_gave_it() -> None:
    answer = {"incarnation": "i", "cursor": 3, "ids": ["a", "b"], "complete": True,
              "views": {"a": (7, {"status": "completed", "output": {"n": 1.5}})}}
    assert decode_feed(orjson.dumps(answer)) == answer
    assert decode_answers(orjson.dumps([{"host": "h", "status": "running"}])) == [
        {"host": "h", "status": "running"}]


async def test_a_host_core_served_over_the_link_runs_a_handed_round_as_over_ray(
        setup: tuple[Journal, HostConfig], demo_services: dict[str, str]) -> None:
    """The opening round crosses the link as JSON and still matches exactly what the
    host derives (a mismatch would be journaled as an interrupted attempt), and the
    finish feed brings the waiting reader the terminal view."""
    journal, config = setup
    core = HostCore("h1", config)
    link = LinkServer(host_handlers(core))
    assert link.address is None
    await link.start("127.0.0.1")
    client = client_of(link)
    opening = await create(journal, "h1", {}, (definition_of(config), None))
    execution_id = opening[0].execution_id  # type: ignore[attr-defined]
    batch = [(execution_id, opening, 1, "reader-1")]
    assert decode_batch(encode_batch(batch)) == [(execution_id, list(opening), 1, "reader-1")]
    primed = decode_feed(await client.call(FINISHED_SINCE, encode_poll(None, None, 0, None)))
    answers = decode_answers(await client.call(START_MANY, encode_batch(batch)))
    assert answers == [{"host": "h1", "node_id": None, "status": "running"}]
    fed = decode_feed(await client.call(FINISHED_SINCE, encode_poll(
        primed["incarnation"], primed["cursor"], 30.0, "reader-1")))
    assert fed["ids"] == [execution_id]
    last_seq, view = fed["views"][execution_id]
    assert view["status"] == "completed"
    history = await events_of(journal, execution_id)
    assert last_seq == len(history)
    assert not [e for e in history if isinstance(e, ev.StepAttemptFailed)]
    assert len(await charges(demo_services, execution_id)) == 1
    # The hand-over repeated after a link that broke once it was sent: without its events
    # the host reads the journal and leaves the ended execution alone.
    again = decode_answers(await client.call(START_MANY, encode_batch(without_events(batch))))
    assert [answer["status"] for answer in again] == ["terminal"]
    assert await events_of(journal, execution_id) == history
    client.close()
    await link.close()
    await core.close()
