"""Running a saga on the traced stack, and checking the trace it leaves behind."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tests.tracing.conftest import JAEGER_URL, TracedStack
from tests.tracing.receiver import ReceivedSpan

TERMINAL = ("completed", "compensated", "failed")
OUTCOMES = {"succeeded", "retryable", "business_failure", "unknown"}
BAGGAGE = "user.plan=do-not-forward"


@dataclass
class Run:
    execution_id: str
    trace_id: str
    caller_span: str
    view: dict[str, Any]


class Tree:
    """One trace's spans, navigable by id, name and parent."""

    def __init__(self, spans: Iterable[ReceivedSpan]) -> None:
        self.spans = list(spans)
        self.by_id = {span.span_id: span for span in self.spans}

    def named(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]

    def one(self, name: str) -> ReceivedSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {self.render()}"
        return found[0]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        found = [span for span in self.spans if span.parent_span_id == parent.span_id]
        return sorted(found, key=lambda span: span.start_ns)

    def clients(self) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.kind == "client"]

    def render(self) -> str:
        """The tree as text: service, kind, name and the saga attributes that matter."""
        roots = [s for s in self.spans if s.parent_span_id not in self.by_id]
        lines: list[str] = []

        def walk(span: ReceivedSpan, depth: int) -> None:
            keys = ("saga.step", "saga.attempt", "saga.outcome", "http.response.status_code")
            extra = " ".join(f"{k.split('.')[-1]}={span.attributes[k]}" for k in keys
                             if k in span.attributes)
            flags = " ERROR" if span.error else ""
            links = f" links={len(span.links)}" if span.links else ""
            events = "".join(f" [{e.name}]" for e in span.events)
            lines.append(f"{'  ' * depth}{span.name}  ({span.service}, {span.kind}) "
                         f"{extra}{flags}{links}{events}".rstrip())
            for child in self.children(span):
                walk(child, depth + 1)

        for root in sorted(roots, key=lambda span: span.start_ns):
            parent = f" <- caller {root.parent_span_id}" if root.parent_span_id else ""
            lines.append(f"[trace {root.trace_id}]{parent}")
            walk(root, 1)
        return "\n".join(lines)


async def start(traced: TracedStack, saga: str, value: Any) -> Run:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{caller_span}-01", "baggage": BAGGAGE}
    async with traced.session.post(f"{traced.url}/v1/sagas/{saga}/executions",
                                   json={"input": value}, headers=headers) as response:
        body = await response.json()
        assert response.status == 202, body
    return Run(body["execution_id"], trace_id, caller_span, body)


async def finish(traced: TracedStack, run: Run, timeout: float = 40.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with traced.session.get(
                f"{traced.url}/v1/executions/{run.execution_id}?wait=10") as response:
            view: dict[str, Any] = await response.json()
        if response.status == 200 and view["status"] in TERMINAL:
            run.view = view
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"execution {run.execution_id} did not end within {timeout}s")


async def run_saga(traced: TracedStack, saga: str, value: Any) -> Run:
    run = await start(traced, saga, value)
    await finish(traced, run)
    return run


def complete(saga: str) -> Callable[[list[ReceivedSpan]], bool]:
    """Done when the saga span arrived and every client span has its server span."""
    def done(spans: list[ReceivedSpan]) -> bool:
        tree = Tree(spans)
        if len(tree.named(f"saga {saga}")) != 1:
            return False
        return all(any(c.kind == "server" for c in tree.children(s)) for s in tree.clients())
    return done


async def trace_of(traced: TracedStack, run: Run, saga: str) -> Tree:
    await traced.receiver.wait_for(run.trace_id, complete(saga))
    await asyncio.sleep(0.2)  # let stragglers of the same trace arrive
    return Tree(traced.receiver.trace(run.trace_id))


async def received(traced: TracedStack, trace_id: str) -> dict[str, list[dict[str, Any]]]:
    """Per service, the trace contexts it received for ``trace_id``."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name, url in traced.services.items():
        async with traced.session.get(f"{url}/_traceparents") as response:
            records = (await response.json())["received"]
        found[name] = [r for r in records if (r["traceparent"] or "").split("-")[1:2] ==
                       [trace_id]]
    return found


def check_saga_trace(tree: Tree, run: Run, saga: str) -> None:
    """What every saga's trace must show, whatever happened in it."""
    view = run.view
    assert view["trace_id"] == run.trace_id
    assert view["links"]["trace"] == f"{JAEGER_URL}/trace/{run.trace_id}"
    assert {span.trace_id for span in tree.spans} == {run.trace_id}

    api = tree.one("POST /v1/sagas/{saga}/executions")
    assert (api.service, api.kind, api.parent_span_id) == ("sagaray-api", "server",
                                                           run.caller_span)
    assert api.attributes["http.route"] == "/v1/sagas/{saga}/executions"
    assert api.attributes["http.response.status_code"] == 202
    assert api.resource["deployment.environment.name"] == "test"

    root = tree.one(f"saga {saga}")
    expected = {"saga.name": saga, "saga.version": view["version"],
                "saga.execution_id": run.execution_id}
    assert (root.service, root.kind, root.parent_span_id) == ("sagaray-host", "internal",
                                                              api.span_id)
    assert expected.items() <= root.attributes.items()
    assert root.attributes["saga.status"] == view["status"]
    assert root.error == (view["status"] != "completed")
    assert api.start_ns <= root.start_ns <= root.end_ns

    phases = [s for s in tree.spans if s.name.split(" ")[0] in ("step", "compensate")]
    assert {s.parent_span_id for s in phases} <= {root.span_id}
    for span in phases:
        step = span.name.split(" ", 1)[1]
        assert {**expected, "saga.step": step}.items() <= span.attributes.items(), span
        assert root.start_ns <= span.start_ns <= span.end_ns <= root.end_ns
        if span.name.startswith("compensate"):
            forward = tree.one(f"step {step}")
            assert span.links == [(run.trace_id, forward.span_id)]
    ran = {s["name"] for s in view["steps"] if s["attempts"] or s["status"] == "skipped"}
    assert {s.name.split(" ", 1)[1] for s in phases if s.name.startswith("step")} == ran

    for client in tree.clients():
        parent = tree.by_id[client.parent_span_id]
        assert parent in phases, client
        attrs = client.attributes
        assert {**expected, "saga.step": parent.attributes["saga.step"]}.items() <= attrs.items()
        assert client.service == "sagaray-host"
        assert isinstance(attrs["saga.attempt"], int) and attrs["saga.outcome"] in OUTCOMES
        assert client.name == attrs["http.request.method"]
        if not attrs.get("saga.interrupted"):  # emitted from the journal, which has no URL
            assert attrs["url.full"].startswith("http://127.0.0.1:")
            assert attrs["server.address"] == "127.0.0.1"
            assert isinstance(attrs["server.port"], int)
        assert client.error == (attrs["saga.outcome"] != "succeeded")
        if client.error:
            assert client.status_message.startswith(attrs["saga.outcome"])
        servers = [c for c in tree.children(client) if c.kind == "server"]
        assert len(servers) == 1, client
        assert servers[0].service == attrs["saga.service"]
        if "http.response.status_code" in attrs:
            assert servers[0].attributes["http.response.status_code"] == \
                attrs["http.response.status_code"]
    orphans = [s for s in tree.spans if s is not api and s.parent_span_id not in tree.by_id]
    assert not orphans, tree.render()


def check_received(tree: Tree, records: dict[str, list[dict[str, Any]]]) -> None:
    """Each service received the ``traceparent`` of the client span that called it."""
    by_parent = {r["traceparent"].split("-")[2]: (service, r)
                 for service, rs in records.items() for r in rs}
    for client in tree.clients():
        service, record = by_parent[client.span_id]
        assert service == client.attributes["saga.service"]
        assert record["method"] == client.attributes["http.request.method"]
        server = tree.by_id[record["span_id"]]
        assert server.parent_span_id == client.span_id
    assert set(by_parent) <= set(tree.by_id)
    assert sum(len(rs) for rs in records.values()) == len(tree.clients())
    assert all(r["baggage"] is None for rs in records.values() for r in rs)


def check_no_secret(spans: Iterable[ReceivedSpan], secret: str) -> None:
    for span in spans:
        texts = [span.name, span.status_message, repr(span.attributes), repr(span.resource),
                 *(repr(e.attributes) for e in span.events)]
        assert not any(secret in text for text in texts), span
        assert not any(key.lower().startswith(("http.request.header", "authorization"))
                       for key in span.attributes), span
        assert "do-not-forward" not in repr(span.attributes)
