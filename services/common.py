"""What every demo service shares: config, state, ledger, idempotency store and problems.

A service is declared as a :class:`ServiceSpec`: a name, a default port and a
list of :class:`Action` objects. Each action's handler is a plain synchronous
function of a :class:`Call`, so that checking state, changing it, writing the
ledger and storing the idempotent reply happen without an ``await`` in between
and can never interleave with another request. The HTTP pipeline that wraps the
handlers (auth, faults, idempotency) lives in :mod:`services.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web

from services.faults import FaultRules

Kind = Literal["forward", "compensation"]
JsonObject = dict[str, Any]

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:sagaray:problem:"
DEFAULT_HOLD_SECONDS = 60.0


@dataclass(frozen=True)
class ServiceConfig:
    """How one instance of a service behaves; ``required_token`` None accepts any caller."""

    name: str
    required_token: str | None = None
    error_rate: float = 0.0
    latency_ms: int = 0
    hold_seconds: float = DEFAULT_HOLD_SECONDS
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.latency_ms < 0:
            raise ValueError("latency_ms cannot be negative")
        if self.hold_seconds < 0:
            raise ValueError("hold_seconds cannot be negative")


class ProblemError(Exception):
    """An RFC 9457 problem that becomes the HTTP reply."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug or title.lower().replace(" ", "-")
        self.headers = dict(headers or {})

    def body(self, service: str) -> JsonObject:
        return {
            "type": PROBLEM_TYPE_PREFIX + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "service": service,
        }


def not_found(what: str, ident: str) -> ProblemError:
    return ProblemError(404, "Not found", f"{what} {ident!r} does not exist", slug="not-found")


def bad_request(detail: str) -> ProblemError:
    return ProblemError(400, "Bad request", detail, slug="bad-request")


@dataclass(frozen=True)
class Reply:
    """A finished reply as it is stored for idempotent replay: status and JSON body."""

    status: int
    body: JsonObject

    def to_response(self, headers: Mapping[str, str] | None = None) -> web.Response:
        content_type = PROBLEM_CONTENT_TYPE if self.status >= 400 else "application/json"
        return web.json_response(
            self.body, status=self.status, content_type=content_type, headers=headers
        )


@dataclass(frozen=True)
class Outcome:
    """What an action handler decided; ``effect`` names the resource it changed, if any."""

    status: int
    body: JsonObject
    effect: str | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Ledger:
    """Every effect a service performed, in order, for tests to assert on."""

    def __init__(self) -> None:
        self.entries: list[JsonObject] = []

    def record(
        self, op: str, kind: Kind, resource: str, key: str | None, request: Any
    ) -> JsonObject:
        entry: JsonObject = {
            "seq": len(self.entries) + 1,
            "op": op,
            "kind": kind,
            "resource": resource,
            "idempotency_key": key,
            "at": utc_now(),
            "request": request,
        }
        self.entries.append(entry)
        return entry

    def clear(self) -> None:
        self.entries.clear()


class ReplyStore:
    """Stored replies per Idempotency-Key, and one lock per key so only one request acts."""

    def __init__(self) -> None:
        self._replies: dict[str, Reply] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def get(self, key: str) -> Reply | None:
        return self._replies.get(key)

    def put(self, key: str, reply: Reply) -> None:
        self._replies[key] = reply

    def clear(self) -> None:
        self._replies.clear()
        # Locks that a request still holds stay valid for it; new requests get new ones.
        self._locks.clear()


class SharedStore:
    """What the instances of one service share, as instances behind one database would:
    records, ledger, stored replies and the ``-once`` memory."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.replies = ReplyStore()
        self.once_seen: set[tuple[str, str]] = set()
        self.tables: dict[str, dict[str, Any]] = {}


class ServiceState:
    """Everything one running service instance remembers; lives in ``app[STATE_KEY]``.

    Fault rules, settings and the request count belong to the instance; the rest lives
    in its :class:`SharedStore`, its own unless it is given one shared with other
    instances of the service.
    """

    def __init__(self, config: ServiceConfig, store: SharedStore | None = None) -> None:
        self.config = config
        self.store = store or SharedStore()
        self.ledger = self.store.ledger
        self.replies = self.store.replies
        self.once_seen = self.store.once_seen
        self.tables = self.store.tables
        self.rules = FaultRules()
        self.rng = random.Random(config.seed)
        self.closing = asyncio.Event()
        self.requests = 0  # business requests this instance received

    @property
    def name(self) -> str:
        return self.config.name

    def table(self, name: str) -> dict[str, Any]:
        return self.tables.setdefault(name, {})

    def first_time(self, fault: str, once_key: str) -> bool:
        """True once per (fault, key): the ``-once`` faults fire only on that first time."""
        marker = (fault, once_key)
        if marker in self.once_seen:
            return False
        self.once_seen.add(marker)
        return True

    def reset(self) -> None:
        self.ledger.clear()
        self.replies.clear()
        self.rules.clear()
        self.once_seen.clear()
        self.tables.clear()
        self.requests = 0

    async def hold(self) -> None:
        """Keep a reply back so the caller times out; shutdown releases it early."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), self.config.hold_seconds)


STATE_KEY: web.AppKey[ServiceState] = web.AppKey("sagaray_service_state", ServiceState)


@dataclass(frozen=True)
class Call:
    """One request as an action handler sees it."""

    state: ServiceState
    body: JsonObject
    params: Mapping[str, str]

    def table(self, name: str) -> dict[str, Any]:
        return self.state.table(name)

    def require_str(self, key: str) -> str:
        value = self.body.get(key)
        if not isinstance(value, str) or not value:
            raise bad_request(f"'{key}' must be a non-empty string")
        return value

    def require_number(self, key: str) -> float:
        value = self.body.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_request(f"'{key}' must be a number")
        return float(value)


Handler = Callable[[Call], Outcome]


@dataclass(frozen=True)
class Action:
    """One business endpoint: its route, its ledger op and kind, and its handler."""

    method: str
    path: str
    op: str
    kind: Kind
    handler: Handler


@dataclass(frozen=True)
class ServiceSpec:
    """A service's identity: name, default port, endpoints and the env var of its token."""

    name: str
    default_port: int
    actions: tuple[Action, ...]
    token_env: str | None = None
    description: str = ""


def lookup(call: Call, table: str, param: str, what: str) -> JsonObject:
    """The record named by the route parameter ``param``, or a 404 problem."""
    ident = call.params[param]
    record: JsonObject | None = call.table(table).get(ident)
    if record is None:
        raise not_found(what, ident)
    return record


def transition(record: JsonObject, id_field: str, status: str) -> Outcome:
    """Move ``record`` to ``status``; asking again answers the same with no second effect."""
    if record["status"] == status:
        return Outcome(200, dict(record))
    record["status"] = status
    return Outcome(200, dict(record), effect=str(record[id_field]))


def create(
    call: Call, table: str, id_field: str, prefix: str, fields: JsonObject, status: str
) -> Outcome:
    """Store a new record under a fresh id and answer 201 with it."""
    ident = new_id(prefix)
    record: JsonObject = {id_field: ident, **fields, "status": status}
    call.table(table)[ident] = record
    return Outcome(201, dict(record), effect=ident)
