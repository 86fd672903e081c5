"""The API's JSON shapes, built from replayed state. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from coordinator.core.definition import SagaDefinition
from coordinator.core.state import ExecutionState
from coordinator.journal.base import ExecutionRow


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def links(execution_id: str, trace_id: str | None, jaeger_url: str | None) -> dict[str, str]:
    found = {"self": f"/v1/executions/{execution_id}",
             "events": f"/v1/executions/{execution_id}/events"}
    if jaeger_url and trace_id:
        found["trace"] = f"{jaeger_url.rstrip('/')}/trace/{trace_id}"
    return found


def execution_view(
    definition: SagaDefinition, state: ExecutionState, jaeger_url: str | None = None
) -> dict[str, Any]:
    trace_id = (state.trace or {}).get("trace_id")
    return {
        "execution_id": state.execution_id,
        "saga": state.saga,
        "version": state.version,
        "status": state.status,
        "reason": state.reason,
        "input": state.input,
        "output": state.output,
        "error": state.error,
        "not_compensated": state.not_compensated,
        "created_at": iso(state.created_at),
        "updated_at": iso(state.updated_at),
        "trace_id": trace_id,
        "placement": {"host": state.host, "node_id": state.node_id},
        "steps": [_step_view(state, step.name) for step in definition.steps],
        "links": links(state.execution_id, trace_id, jaeger_url),
    }


def with_links(view: dict[str, Any], jaeger_url: str | None) -> dict[str, Any]:
    """``view`` (built where the API's Jaeger address is unknown) with this API's links."""
    return {**view, "links": links(view["execution_id"], view["trace_id"], jaeger_url)}


def _step_view(state: ExecutionState, name: str) -> dict[str, Any]:
    step = state.steps[name]
    return {
        "name": name,
        "status": step.status,
        "attempts": step.action.count,
        "started_at": iso(step.started_at),
        "ended_at": iso(step.ended_at),
        "output": step.output,
        "error": step.error,
        "compensation": step.compensation_view,
    }


def summary_view(row: ExecutionRow) -> dict[str, Any]:
    return {
        "execution_id": row.execution_id,
        "saga": row.saga,
        "version": row.version,
        "status": row.status,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def accepted_view(state: ExecutionState) -> dict[str, Any]:
    return {
        "execution_id": state.execution_id,
        "saga": state.saga,
        "version": state.version,
        "status": state.status,
        "links": {"self": f"/v1/executions/{state.execution_id}"},
    }
