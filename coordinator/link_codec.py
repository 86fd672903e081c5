"""What the host link carries: the bodies of its two operations, both ends.

The hand-over batch travels as the JSON pydantic makes of the events (the form
the journal stores), so the host validates it exactly as it validates a journal
read; answers and feed polls are plain JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import TypeAdapter

from coordinator.core import events as ev
from coordinator.host_link import Handler

if TYPE_CHECKING:
    from coordinator.host_core import HostCore

START_MANY = "start_many"
FINISHED_SINCE = "finished_since"
# (execution id, its first events or None, lease fence, reader waiting for its end)
BatchItem = tuple[str, list[ev.Event] | None, int | None, str | None]
_BATCH: TypeAdapter[list[BatchItem]] = TypeAdapter(list[BatchItem])


def encode_batch(batch: Sequence[tuple[str, Sequence[ev.Event] | None, int | None, str | None]]
                 ) -> bytes:
    return _BATCH.dump_json([(execution_id, None if events is None else list(events),
                              fence, reader) for execution_id, events, fence, reader in batch])


def decode_batch(body: bytes) -> list[BatchItem]:
    return _BATCH.validate_json(body)


def encode_poll(incarnation: str | None, cursor: int | None, timeout: float,
                reader: str | None) -> bytes:
    return orjson.dumps([incarnation, cursor, timeout, reader])


def decode_feed(body: bytes) -> dict[str, Any]:
    """A finish-feed answer as :meth:`FinishFeed.since` returned it (views as tuples)."""
    answer: dict[str, Any] = orjson.loads(body)
    answer["views"] = {execution_id: (int(final[0]), final[1])
                       for execution_id, final in answer.get("views", {}).items()}
    return answer


def decode_answers(body: bytes) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = orjson.loads(body)
    return answers


def host_handlers(core: HostCore) -> dict[str, Handler]:
    """The link's operations on ``core``: the same calls as the SagaHost's Ray methods."""

    async def start_many(body: bytes) -> bytes:
        return orjson.dumps(await core.start_many(decode_batch(body)))

    async def finished_since(body: bytes) -> bytes:
        incarnation, cursor, timeout, reader = orjson.loads(body)
        return orjson.dumps(await core.finishes.since(incarnation, cursor, float(timeout),
                                                      reader))

    return {START_MANY: start_many, FINISHED_SINCE: finished_since}
