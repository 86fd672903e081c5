"""``GET /metrics``: the Prometheus exposition, gathered at scrape time.

Contract of :class:`ApiMetrics`:
- Owns one ``CollectorRegistry`` per app (never the process-global one, so several
  apps in one process, as in the tests, do not collide).
- At each scrape asks every SagaHost of the pool (the names read at that moment, so a
  pool that grows or shrinks is followed) for its snapshot, each within ``timeout``
  seconds: a slow or dead host is reported ``sagaray_host_up 0`` and left out, never
  waited for. Host-side series carry a ``host`` label; sum them over ``host``.
- API-side values (starts by saga, in-flight counts, refusals) come from this process;
  with several API processes, sum over their scrapes.
- Holds no state between scrapes besides the registry; retries nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from coordinator.executions import ExecutionService
from coordinator.metrics.histogram import cumulative
from coordinator.pool import HostPool
from coordinator.traffic.origin import origin

# The classic text format every Prometheus parses; the names here need no UTF-8 escaping.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
SCRAPE_TIMEOUT = 2.0
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
HostSnapshots = dict[str, dict[str, Any] | None]


class _Families(Collector):
    """Yields the families built for the scrape in progress."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


class ApiMetrics:
    def __init__(self, service: ExecutionService, pool: HostPool,
                 timeout: float = SCRAPE_TIMEOUT) -> None:
        self.service, self.pool, self.timeout = service, pool, timeout
        self.registry = CollectorRegistry(auto_describe=False)
        self._families = _Families()
        self.registry.register(self._families)

    async def render(self) -> bytes:
        hosts = await self.pool.host_metrics(self.timeout)
        # Built and rendered with no await in between: concurrent scrapes do not mix.
        self._families.families = [*api_families(self.service, self.pool.names),
                                   host_calls(self.pool), *host_families(hosts)]
        return generate_latest(self.registry)


def api_families(service: ExecutionService, names: list[str]) -> Iterator[Metric]:
    started = CounterMetricFamily("sagaray_executions_started",
                                  "Executions created by this API process", labels=["saga"])
    for saga, count in sorted(service.started.items()):
        started.add_metric([saga], count)
    yield started
    yield GaugeMetricFamily("sagaray_hosts", "SagaHosts in the pool", value=len(names))
    admission = service.admission
    if admission is None:
        return
    yield GaugeMetricFamily("sagaray_executions_in_flight", "Non-terminal executions "
                            "(journal count, refreshed every second, plus starts since)",
                            value=admission.total)
    yield GaugeMetricFamily("sagaray_executions_in_flight_limit", "--max-in-flight",
                            value=admission.limits.total)
    per_host = GaugeMetricFamily("sagaray_host_executions_in_flight",
                                 "Non-terminal executions owned by each SagaHost",
                                 labels=["host"])
    for name in names:
        per_host.add_metric([name], admission.by_host.get(name, 0))
    yield per_host
    yield GaugeMetricFamily("sagaray_host_executions_in_flight_limit",
                            "--max-in-flight-per-host", value=admission.limits.per_host)
    refused = CounterMetricFamily("sagaray_admission_refused",
                                  "Starts answered 429, by the limit that was full",
                                  labels=["scope"])
    for scope, count in sorted(admission.refused.items()):
        refused.add_metric([scope], count)
    yield refused


def host_calls(pool: HostPool) -> Metric:
    calls = CounterMetricFamily(
        "sagaray_host_calls", "Hand-over and finish-feed calls from this API process to "
        "SagaHosts, by the way they went (the host link, or Ray when it is off or down)",
        labels=["call", "via"])
    for (call, via), count in sorted(pool.calls.items()):
        calls.add_metric([call, via], count)
    return calls


_SAGA_COUNTERS = (
    # (snapshot key, metric name, help, label of the breakdown)
    ("ended", "sagaray_executions_ended", "Executions that reached a terminal status",
     "status"),
    ("attempts", "sagaray_step_attempts", "Action attempts of steps, by outcome", "outcome"),
    ("compensation_attempts", "sagaray_compensation_attempts",
     "Compensation attempts, by outcome", "outcome"),
    ("rollbacks", "sagaray_compensations", "Executions that began compensating, by reason",
     "reason"),
    ("retries", "sagaray_retries", "Retries scheduled, by phase", "phase"),
)


def host_families(hosts: HostSnapshots) -> Iterator[Metric]:
    answered = {name: snap for name, snap in hosts.items() if snap is not None}
    up = GaugeMetricFamily("sagaray_host_up", "1 when the SagaHost answered this scrape in "
                           "time", labels=["host"])
    running = GaugeMetricFamily("sagaray_host_executions_running",
                                "Executions with a runner on the host", labels=["host"])
    for name, snap in hosts.items():
        up.add_metric([name], 0 if snap is None else 1)
        if snap is not None:
            running.add_metric([name], snap.get("running", 0))
    yield up
    yield running
    yield from _saga_counters(answered)
    yield from _latencies(answered)
    yield from _journal(answered)
    yield circuit_family(snap.get("traffic") for snap in answered.values())


def _saga_counters(hosts: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    for key, name, text, label in _SAGA_COUNTERS:
        family = CounterMetricFamily(name, text, labels=["host", "saga", label])
        for host, snap in sorted(hosts.items()):
            for saga, counters in sorted(snap["sagas"].items()):
                for value, count in counters[key].items():
                    family.add_metric([host, saga, value], count)
        yield family


def _latencies(hosts: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    steps = HistogramMetricFamily("sagaray_step_duration_seconds", "From a step's first "
                                  "attempt to its success", labels=["host", "saga"])
    sagas = HistogramMetricFamily("sagaray_saga_duration_seconds", "From an execution's "
                                  "start to its terminal status", labels=["host", "saga",
                                                                          "status"])
    for host, snap in sorted(hosts.items()):
        for saga, counters in sorted(snap["sagas"].items()):
            _add(steps, [host, saga], counters["step_seconds"])
            for status, histogram in counters["saga_seconds"].items():
                _add(sagas, [host, saga, status], histogram)
    yield steps
    yield sagas


def _journal(hosts: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    append = HistogramMetricFamily("sagaray_journal_append_seconds", "From a journal write "
                                   "request to its durable commit", labels=["host"])
    batch = HistogramMetricFamily("sagaray_journal_batch_size", "Write requests committed "
                                  "in one transaction (group commit)", labels=["host"])
    for host, snap in sorted(hosts.items()):
        _add(append, [host], snap["journal_append_seconds"])
        _add(batch, [host], snap["journal_batch_size"])
    yield append
    yield batch


def _add(family: HistogramMetricFamily, labels: list[str], histogram: dict[str, Any]) -> None:
    family.add_metric(labels, cumulative(histogram), histogram["sum"])


def circuit_states(traffics: Iterable[dict[str, Any] | None]) -> dict[tuple[str, str], int]:
    """``(service, instance url) -> 0 closed, 1 half_open, 2 open``, from each host's
    ``traffic_snapshot()``; hosts keep circuits of their own, so the worst state wins."""
    states: dict[tuple[str, str], int] = {}
    for traffic in traffics:
        for instance in (traffic or {}).get("instances", ()):
            value = CIRCUIT_STATES.get(str(instance.get("state")))
            if value is None:
                continue
            key = (str(instance.get("service")), origin(str(instance.get("url"))))
            states[key] = max(states.get(key, 0), value)
    return states


def circuit_family(traffics: Iterable[dict[str, Any] | None]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("sagaray_circuit_state", "Circuit of each service instance: "
                               "0 closed, 1 half_open, 2 open (the worst any host sees)",
                               labels=["service", "instance"])
    for (service, instance), value in sorted(circuit_states(traffics).items()):
        family.add_metric([service, instance], value)
    return family
