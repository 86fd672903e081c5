"""services.yaml traffic fields: defaults, and errors naming file, service and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.loader import DefinitionError, load_services
from coordinator.server import endpoints_of
from coordinator.traffic.policy import OutlierPolicy, TrafficPolicy


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "services.yaml"
    path.write_text(text)
    return path


def test_defaults_and_a_full_example(tmp_path: Path) -> None:
    path = write(tmp_path, """
services:
  one: {url: "http://127.0.0.1:1"}
  many: {urls: ["http://a:1", "http://b:1/"]}
  tuned:
    urls: [http://a:2, http://b:2]
    health_path: /_health
    health_interval: 500ms
    health_timeout: 200ms
    outlier: {consecutive_failures: 2, ejection: 1s, max_ejection: 8s}
    max_concurrency: 4
    queue_size: 10
    queue_timeout: 250ms
""")
    services = load_services(path)
    one, many = services["one"], services["many"]
    assert one.traffic_only() == TrafficPolicy()
    assert one.effective_outlier(len(one.urls)) is None  # a single url is never ejected
    assert many.urls == ("http://a:1", "http://b:1")
    assert many.effective_outlier(2) == OutlierPolicy(consecutive_failures=5, ejection=5.0,
                                                      max_ejection=60.0)
    assert (many.health_path, many.max_concurrency, many.queue_size, many.queue_timeout) == (
        None, None, 100, 1.0)
    policy = endpoints_of(services)["tuned"].traffic
    assert policy == TrafficPolicy(
        health_path="/_health", health_interval=0.5, health_timeout=0.2,
        outlier=OutlierPolicy(consecutive_failures=2, ejection=1.0, max_ejection=8.0),
        max_concurrency=4, queue_size=10, queue_timeout=0.25)
    assert policy.outlier is not None and policy.outlier.ejection_for(3) == 4.0


def test_bad_traffic_fields_name_file_service_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, """
services:
  both: {url: "http://a:1", urls: ["http://a:1"]}
  none: {headers: {}}
  twice: {urls: ["http://a:1", "http://a:1/"]}
  path: {url: "http://a:1", health_path: "_health"}
  outl: {urls: ["http://a:1", "http://b:1"], outlier: {consecutive_failures: 0}}
  order: {url: "http://a:1", outlier: {ejection: 10s, max_ejection: 1s}}
  bulk: {url: "http://a:1", max_concurrency: 0, queue_timeout: soon}
  typo: {url: "http://a:1", outliers: {}}
""")
    with pytest.raises(DefinitionError) as caught:
        load_services(path)
    found = {(p.field, p.message) for p in caught.value.problems}
    assert all(p.file == str(path) for p in caught.value.problems)
    fields = sorted(field for field, _ in found)
    assert fields == sorted([
        "services.both.urls", "services.none", "services.twice.urls",
        "services.path.health_path", "services.outl.outlier.consecutive_failures",
        "services.order.outlier", "services.bulk.max_concurrency",
        "services.bulk.queue_timeout", "services.typo.outliers"]), found
    messages = dict(found)
    assert messages["services.both.urls"] == "give url or urls, not both"
    assert "same instance twice" in messages["services.twice.urls"]
    assert "max_ejection" in messages["services.order.outlier"]
    assert "starting with '/'" in messages["services.path.health_path"]
