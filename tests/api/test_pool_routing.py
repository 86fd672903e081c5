"""Where ``HostPool.dispatch`` sends a start: pure routing, no Ray call is made."""

from __future__ import annotations

from typing import Any

from coordinator.host_config import HostConfig
from coordinator.pool import HostPool


def pool_of(names: list[str]) -> HostPool:
    pool = HostPool(HostConfig(journal_url="sqlite:///unused.db", definitions=()), len(names))
    handles: dict[str, Any] = {name: object() for name in names}
    pool._handles, pool._names = handles, list(names)
    return pool


def test_a_leased_start_goes_to_the_lease_holder_while_it_is_in_the_pool() -> None:
    pool = pool_of(["h-0", "h-1", "h-2"])
    ids = [f"e{n}" for n in range(30)]
    hashed = {execution_id: pool.host_name(execution_id) for execution_id in ids}
    for execution_id in ids:
        other = next(name for name in pool.names if name != hashed[execution_id])
        # The membership moved between the journal write and the hand-over.
        assert pool._route(execution_id, 1, other) == other
        assert pool._route(execution_id, None, other) == hashed[execution_id]
        assert pool._route(execution_id, 1, "h-gone") == hashed[execution_id]
        assert pool._route(execution_id, 1, None) == hashed[execution_id]
