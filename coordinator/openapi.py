"""The OpenAPI 3.1 document of the HTTP API in ``coordinator.api``.

Kept beside the handlers and checked against the app's route table by
``tests/api/test_api_unit.py``, so a route cannot ship undocumented. Response
schemas are strict (``additionalProperties: false``) so that drift between the
views and this document fails the tests instead of surprising clients.
"""

from __future__ import annotations

from typing import Any, get_args

from coordinator.core import events as ev
from coordinator.core.definition import SagaDefinition
from coordinator.core.state import ExecutionStatus, StepStatus
from coordinator.executions import MAX_WAIT_SECONDS

Schema = dict[str, Any]
MAX_BODY_BYTES = 1024 * 1024
EXECUTION_STATUSES: list[str] = list(get_args(ExecutionStatus))
STEP_STATUSES: list[str] = list(get_args(StepStatus))
BEARER_SCHEME = "bearerAuth"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **more: Any) -> Schema:
    return {"type": [kind, "null"], **more}


def _object(required: list[str], properties: dict[str, Schema], **more: Any) -> Schema:
    return {"type": "object", "required": required, "properties": properties,
            "additionalProperties": False, **more}


_TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
_ANY: Schema = {"description": "any JSON value"}


def event_types() -> list[str]:
    union = get_args(ev.Event)[0]
    return sorted(str(cls.model_fields["type"].default) for cls in get_args(union))


def _execution_schemas() -> dict[str, Schema]:
    identity: dict[str, Schema] = {
        "execution_id": {"type": "string"},
        "saga": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "status": _ref("ExecutionStatus"),
    }
    return {
        "ExecutionStatus": {"type": "string", "enum": EXECUTION_STATUSES},
        "Compensation": _object(["status", "attempts", "error"], {
            "status": {"type": "string",
                       "enum": ["compensating", "compensated", "compensation_failed"]},
            "attempts": {"type": "integer", "minimum": 0},
            "error": _nullable("string"),
        }),
        "ExecutionStep": _object(
            ["name", "status", "attempts", "started_at", "ended_at", "output", "error",
             "compensation"], {
                "name": {"type": "string"},
                "status": {"type": "string", "enum": STEP_STATUSES},
                "attempts": {"type": "integer", "minimum": 0},
                "started_at": _nullable("string", format="date-time"),
                "ended_at": _nullable("string", format="date-time"),
                "output": _ANY,
                "error": _nullable("string"),
                "compensation": {"oneOf": [{"type": "null"}, _ref("Compensation")],
                                 "description": "null until the step's compensation began"},
            }),
        "Execution": _object([
            *identity, "reason", "input", "output", "error", "not_compensated", "created_at",
            "updated_at", "trace_id", "placement", "steps", "links"], {
                **identity,
                "reason": _nullable("string"),
                "input": _ANY,
                "output": _ANY,
                "error": _nullable("string"),
                "not_compensated": {"type": "array", "items": {"type": "string"}},
                "created_at": _TIMESTAMP,
                "updated_at": _TIMESTAMP,
                "trace_id": _nullable("string"),
                "placement": _object(["host", "node_id"], {
                    "host": _nullable("string"), "node_id": _nullable("string")}),
                "steps": {"type": "array", "items": _ref("ExecutionStep")},
                "links": _object(["self", "events"], {
                    "self": {"type": "string"}, "events": {"type": "string"},
                    "trace": {"type": "string", "description": "the trace in Jaeger"}}),
            }),
        "AcceptedExecution": _object([*identity, "links"], {
            **identity, "links": _object(["self"], {"self": {"type": "string"}})}),
        "ExecutionSummary": _object([*identity, "created_at", "updated_at"], {
            **identity, "created_at": _TIMESTAMP, "updated_at": _TIMESTAMP}),
        "ExecutionPage": _object(["items", "next_cursor"], {
            "items": {"type": "array", "items": _ref("ExecutionSummary")},
            "next_cursor": _nullable("string", description="null on the last page")}),
        "Event": {
            "type": "object", "required": ["seq", "type", "at"], "additionalProperties": True,
            "properties": {
                "seq": {"type": "integer", "minimum": 1},
                "type": {"type": "string", "enum": event_types()},
                "at": {"type": "number", "description": "seconds since the epoch"},
            }},
        "EventList": _object(["events"], {"events": {"type": "array", "items": _ref("Event")}}),
    }


def _definition_schemas() -> dict[str, Schema]:
    """``SagaDefinition`` as pydantic serializes it, with its parts prefixed ``Definition``."""
    schema = SagaDefinition.model_json_schema(
        mode="serialization", ref_template="#/components/schemas/Definition{model}")
    parts = schema.pop("$defs", {})
    found = {f"Definition{name}": _strip_pydantic_only(part) for name, part in parts.items()}
    found["SagaDefinition"] = _strip_pydantic_only(schema)
    return found


def _strip_pydantic_only(node: Any) -> Any:
    # pydantic leaks ``gt`` from Field(gt=...) on string-serialized durations; it is no
    # JSON Schema keyword and OpenAPI linters reject it.
    if isinstance(node, dict):
        return {k: _strip_pydantic_only(v) for k, v in node.items() if k != "gt"}
    if isinstance(node, list):
        return [_strip_pydantic_only(v) for v in node]
    return node


def _other_schemas() -> dict[str, Schema]:
    return {
        "Problem": {
            "type": "object", "required": ["type", "title", "status", "detail"],
            "additionalProperties": True,
            "properties": {
                "type": {"type": "string", "format": "uri-reference"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "instance": {"type": "string"},
            }},
        "ValidationProblem": {"allOf": [_ref("Problem"), {
            "type": "object", "required": ["errors"],
            "properties": {"errors": {"type": "array", "minItems": 1, "items": _object(
                ["path", "message"], {"path": {"type": "string"},
                                      "message": {"type": "string"}})}}}]},
        "AdmissionProblem": {"allOf": [_ref("Problem"), _object(
            ["in_flight", "limit", "scope"], {
                "in_flight": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1},
                "scope": {"enum": ["total", "host"]}}, additionalProperties=True)]},
        "StartRequest": _object(["input"], {"input": {
            **_ANY, "description": "the saga input; checked against its input_schema"}}),
        "CancelRequest": _object([], {"reason": _nullable("string")}),
        "SagaSummary": _object(["name", "versions", "latest"], {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "latest": _ref("SagaDefinition")}),
        "SagaList": _object(["sagas"], {"sagas": {"type": "array",
                                                  "items": _ref("SagaSummary")}}),
        "SagaVersions": _object(["name", "versions"], {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": _ref("SagaDefinition")}}),
        "Health": _object(["status"], {"status": {"const": "ok"}}),
        "Ready": _object(["status", "checks"], {
            "status": {"const": "ready"},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}}}),
        "OpenAPI": {"type": "object", "required": ["openapi", "paths"]},
    }


def _problem(description: str, schema: str = "Problem", **more: Any) -> Schema:
    return {"description": description,
            "content": {"application/problem+json": {"schema": _ref(schema)}}, **more}


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer", "minimum": 0}}}

_RESPONSES: dict[str, Schema] = {
    "BadRequest": _problem("A parameter or the body is malformed; `detail` says which."),
    "NotFound": _problem("No such saga, version, execution or route."),
    "Conflict": _problem("The request conflicts with the execution's state or an earlier "
                         "request with the same idempotency key."),
    "PayloadTooLarge": _problem(f"The body is larger than {MAX_BODY_BYTES} bytes."),
    "InvalidInput": _problem("The input breaks the saga's input_schema; `errors` lists "
                             "every violation.", "ValidationProblem"),
    "Unavailable": _problem("A dependency (the journal) is unavailable; retry later.",
                            headers=_RETRY_AFTER),
    "InternalError": _problem("An unexpected error; the server log has the details."),
    "TooManyRequests": _problem("Too many executions in flight (`scope`: `total` for "
                                "--max-in-flight, `host` for --max-in-flight-per-host); "
                                "nothing was written. Retry after `Retry-After` seconds.",
                                "AdmissionProblem", headers=_RETRY_AFTER),
    "Unauthorized": _problem("No bearer token, or not a valid one (only when the server is "
                             "configured with API tokens).", headers={"WWW-Authenticate": {
                                 "description": "Bearer challenge (RFC 6750)",
                                 "schema": {"type": "string"}}}),
    "Forbidden": _problem("The token may only read; this route needs a write token.",
                          headers={"WWW-Authenticate": {
                              "description": 'Bearer challenge, error="insufficient_scope"',
                              "schema": {"type": "string"}}}),
}

_CODES = {"400": "BadRequest", "401": "Unauthorized", "403": "Forbidden", "404": "NotFound",
          "409": "Conflict", "413": "PayloadTooLarge", "429": "TooManyRequests",
          "422": "InvalidInput", "500": "InternalError", "503": "Unavailable"}


def _ok(description: str, schema: str, **more: Any) -> Schema:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(schema)}}, **more}


def _op(op_id: str, summary: str, ok: dict[str, Schema], errors: list[int],
        *, write: bool = False, public: bool = False, **more: Any) -> Schema:
    """One operation; unless ``public`` it needs a bearer token (a write token if ``write``)."""
    responses: dict[str, Any] = dict(ok)
    auth = [] if public else [401, 403] if write else [401]
    if public:
        more = {**more, "security": []}
    for code in [*errors, *auth, 500]:
        responses[str(code)] = {"$ref": f"#/components/responses/{_CODES[str(code)]}"}
    return {"operationId": op_id, "summary": summary, **more,
            "responses": dict(sorted(responses.items()))}


def _path_param(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


def _wait_param(description: str) -> Schema:
    return {"name": "wait", "in": "query", "required": False, "description": description,
            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS}}


_EXECUTION_ID = _path_param("id", "the execution id")
_SAGA = _path_param("saga", "the saga name")
_LOCATION = {"Location": {"description": "the execution's URL", "schema": {"type": "string"}}}


def _start_operation() -> Schema:
    params = [
        _SAGA,
        {"name": "version", "in": "query", "required": False,
         "description": "the saga version; default the highest loaded",
         "schema": {"type": "integer", "minimum": 1}},
        _wait_param("hold the reply up to this many seconds until the execution is terminal"),
        {"name": "Idempotency-Key", "in": "header", "required": False,
         "description": "repeats with the same key and input return the first execution",
         "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
        {"name": "traceparent", "in": "header", "required": False,
         "description": "W3C trace context of the caller", "schema": {"type": "string"}},
    ]
    body = {"required": True,
            "content": {"application/json": {"schema": _ref("StartRequest")}}}
    ok = {"200": _ok("A repeat with the same Idempotency-Key, or (with `wait`) the "
                     "execution reached a terminal status.", "Execution"),
          "202": _ok("Started; still running.", "AcceptedExecution", headers=_LOCATION)}
    return _op("startExecution", "Start an execution of a saga", ok,
               [400, 404, 409, 413, 422, 429, 503], write=True, parameters=params,
               requestBody=body)


def _list_operation() -> Schema:
    params = [
        {"name": "saga", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "only executions of this saga; empty means any"},
        {"name": "status", "in": "query", "required": False,
         "schema": _ref("ExecutionStatus"), "description": "only executions in this status"},
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
        {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "`next_cursor` of the previous page; empty means the first page"},
    ]
    return _op("listExecutions", "List executions, newest first",
               {"200": _ok("One page of executions.", "ExecutionPage")}, [400, 503],
               parameters=params)


def _execution_paths() -> dict[str, Schema]:
    accepted = {"202": _ok("Accepted; the execution as it stands.", "Execution")}
    cancel_body = {"required": False,
                   "content": {"application/json": {"schema": _ref("CancelRequest")}}}
    return {
        "/v1/sagas/{saga}/executions": {"post": _start_operation()},
        "/v1/executions": {"get": _list_operation()},
        "/v1/executions/{id}": {"get": _op(
            "getExecution", "An execution with its steps",
            {"200": _ok("The execution (with `wait`: once terminal or when the wait "
                        "ends).", "Execution")}, [400, 404, 503],
            parameters=[_EXECUTION_ID, _wait_param("hold the reply up to this many seconds "
                                                   "until the execution is terminal")])},
        "/v1/executions/{id}/events": {"get": _op(
            "listExecutionEvents", "The journal of an execution, oldest first",
            {"200": _ok("Every event.", "EventList")}, [404, 503],
            parameters=[_EXECUTION_ID])},
        "/v1/executions/{id}/cancel": {"post": _op(
            "cancelExecution", "Ask a running execution to roll back", accepted,
            [400, 404, 409, 413, 503], write=True, parameters=[_EXECUTION_ID],
            requestBody=cancel_body)},
        "/v1/executions/{id}/resume": {"post": _op(
            "resumeExecution", "Resume a failed execution", accepted, [404, 409, 503],
            write=True, parameters=[_EXECUTION_ID])},
    }


def _other_paths() -> dict[str, Schema]:
    not_ready = _problem("A readiness check failed; `checks` tells which.",
                         headers=_RETRY_AFTER)
    return {
        "/v1/sagas": {"get": _op("listSagas", "The loaded sagas",
                                 {"200": _ok("Every saga with its versions.", "SagaList")}, [])},
        "/v1/sagas/{saga}": {"get": _op(
            "getSaga", "Every loaded version of a saga",
            {"200": _ok("The definitions, oldest version first.", "SagaVersions")}, [404],
            parameters=[_SAGA])},
        "/healthz": {"get": _op("healthz", "The process is up",
                                {"200": _ok("Up.", "Health")}, [], public=True)},
        "/readyz": {"get": _op("readyz", "The process can serve requests",
                               {"200": _ok("Ready.", "Ready"), "503": not_ready}, [],
                               public=True)},
        "/openapi.json": {"get": _op("openapi", "This document",
                                     {"200": _ok("The OpenAPI document.", "OpenAPI")}, [])},
        "/metrics": {"get": _op("metrics", "Prometheus metrics (text exposition format)", {
            "200": {"description": "Executions, steps, compensations, retries, circuits, "
                                   "hosts and the journal; docs/metrics.md lists them.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}, [])},
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Sagaray",
            "version": "1",
            "description": "Start, watch, cancel and resume saga executions. Every error "
                           "is an RFC 9457 problem (application/problem+json). When the "
                           "server has API tokens, every route but /healthz and /readyz "
                           "needs `Authorization: Bearer TOKEN`: a read token for GET, a "
                           "write token (which also reads) for POST.",
        },
        "security": [{BEARER_SCHEME: []}],
        "paths": {**_execution_paths(), **_other_paths()},
        "components": {
            "schemas": {**_execution_schemas(), **_definition_schemas(), **_other_schemas()},
            "responses": _RESPONSES,
            "securitySchemes": {BEARER_SCHEME: {
                "type": "http", "scheme": "bearer",
                "description": "An API token from the server's tokens file or its "
                               "SAGARAY_API_READ_TOKEN / SAGARAY_API_WRITE_TOKEN."}},
        },
    }
