"""OpenTelemetry tracing of sagas: configured by the standard ``OTEL_*`` variables.

Tracing is on when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and ``OTEL_SDK_DISABLED`` is not true.
When it is off nothing is wrapped and the SDK is not even imported: this module
only reads settings, and the modules that import OpenTelemetry load on demand.

Where the spans come from:
- :mod:`coordinator.telemetry.http`: the server span of each API request, and the
  saga's ids, made up front and journaled in ``ExecutionStarted.trace``;
- :mod:`coordinator.telemetry.host`: the attempt (HTTP client) spans, live, through
  the runner's ``around_attempt`` hook, and the saga, step and compensation spans,
  emitted from the journal when the execution ends (:mod:`~.history` plans them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator.core.definition import SagaDefinition
    from coordinator.telemetry.host import HostTracing
    from coordinator.telemetry.http import ApiTracing

OTEL_PREFIX = "OTEL_"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
API_SERVICE_NAME = "sagaray-api"
HOST_SERVICE_NAME = "sagaray-host"


def otel_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``OTEL_*`` settings of ``environ`` (the process environment by default)."""
    env = os.environ if environ is None else environ
    return {name: value for name, value in env.items() if name.startswith(OTEL_PREFIX)}


def tracing_enabled(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def adopt_otel_env(env: Mapping[str, str]) -> None:
    """Make ``env`` this process's OTel settings (in a Ray worker that hosts sagas).

    The exporter reads some settings (certificates, compression, timeouts) only
    from the environment, and a worker on another node does not share the API's.
    """
    if tracing_enabled(env):
        os.environ.update(otel_env(env))


def host_tracing(
    env: Mapping[str, str], definitions: Iterable[SagaDefinition]
) -> HostTracing | None:
    """The tracing of a host process, or None when tracing is off."""
    if not tracing_enabled(env):
        return None
    from coordinator.telemetry.host import HostTracing

    return HostTracing.create(env, definitions)


def api_tracing(env: Mapping[str, str]) -> ApiTracing | None:
    """The API process's tracing, or None when tracing is off."""
    if not tracing_enabled(env):
        return None
    from coordinator.telemetry.http import create_api_tracing

    return create_api_tracing(env)


__all__ = [
    "API_SERVICE_NAME",
    "HOST_SERVICE_NAME",
    "adopt_otel_env",
    "api_tracing",
    "host_tracing",
    "otel_env",
    "tracing_enabled",
]
