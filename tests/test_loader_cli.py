"""Loading saga and services files from disk, the registry, and ``sagaray validate``."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.cli import main
from coordinator.loader import (
    DefinitionError,
    MissingEnvironmentVariable,
    Registry,
    ServiceConfig,
    UnknownSaga,
    UnknownVersion,
    load_definition_file,
    load_registry,
    load_services,
    resolve_headers,
)

ROOT = Path(__file__).resolve().parents[1]
SAGAS = ROOT / "sagas"
FIXTURES = ROOT / "tests" / "fixtures"
INVALID = FIXTURES / "invalid"
SERVICES = FIXTURES / "services.yaml"
SERVICE_FILES = [SERVICES, *([ROOT / "services.yaml"] if (ROOT / "services.yaml").exists() else [])]
SERVICE_NAMES = set(load_services(SERVICES))


def problems_of(path: Path, services: set[str] | None = SERVICE_NAMES) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_definition_file(path, services)
    return [str(problem) for problem in caught.value.problems]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def saga_text(name: str = "s", version: int = 1, service: str = "orders") -> str:
    return (f"name: {name}\nversion: {version}\n"
            f"steps:\n  - {{name: a, action: {{service: {service}, path: /a}}}}\n")


@pytest.mark.parametrize("services", SERVICE_FILES, ids=lambda p: p.name)
def test_the_shipped_sagas_validate(services: Path) -> None:
    registry = load_registry(SAGAS, services)
    assert registry.names() == ["order_fulfillment", "trip_booking"]
    assert registry.get("trip_booking").graph.pivot == "confirm"
    assert registry.get("order_fulfillment").graph.pivot == "confirm_order"


RULES = [
    ("duplicate_step", "reserve", "name", "duplicate step name"),
    ("unknown_dependency", "charge", "depends_on", "unknown step 'nope'"),
    ("cycle", "first", "depends_on", "dependency cycle: first -> third -> second -> first"),
    ("unknown_action_service", "reserve", "action.service", "unknown service 'warehouse'"),
    ("unknown_compensation_service", "reserve", "compensation.service",
     "unknown service 'warehouse'"),
    ("unparsable_when", "reserve", "when", "unparsable expression"),
    ("unparsable_placeholder", "reserve", "action.path", "invalid JMESPath 'input..id'"),
    ("unparsable_compensation_body", "reserve", "compensation.body", "incomplete expression"),
    ("reads_non_ancestor", "charge", "action.body", "reads step 'reserve', which it does not"),
    ("reads_itself", "reserve", "action.path", "reads its own step"),
    ("when_reads_later_step", "reserve", "when", "reads step 'charge'"),
    ("compensation_reads_other", "reserve", "compensation.path", "reads step 'charge'"),
    ("reads_all_steps", "charge", "action.headers", "reads `steps` as a whole"),
    ("two_pivots", "ship", "pivot", "more than one pivot: 'charge'"),
    ("unordered_pivot", "charge", "pivot", "not ordered relative to 'notify'"),
    ("compensation_after_pivot", "ship", "compensation", "runs after the pivot 'confirm'"),
    ("bad_input_schema", None, "input_schema.properties.amount.type", "'money'"),
    ("bad_duration", "charge", "timeout", "unparsable duration '5 parsecs'"),
    ("unknown_field", "reserve", "retires", "unknown field"),
    ("nameless_step", "steps[1]", "name", "required field is missing"),
    ("too_many_steps", None, "steps",
     "saga 'too_many_steps' has 201 steps, over the limit of 200 steps per saga"),
    ("too_wide", None, "steps[].depends_on",
     "saga 'too_wide' has a parallel width of 65 (steps that can run at once by depends_on), "
     "over the limit of 64"),
    ("max_events_too_low", None, "limits.max_events",
     "saga 'max_events_too_low': max_events 8 is below the 9 events a run needs"),
    ("max_attempts_too_low", None, "limits.max_attempts",
     "saga 'max_attempts_too_low': max_attempts 2 is below its 3 steps"),
]


@pytest.mark.parametrize(("fixture", "step", "field", "fragment"), RULES,
                         ids=[rule[0] for rule in RULES])
def test_each_rule_names_file_step_and_field(
    fixture: str, step: str | None, field: str, fragment: str
) -> None:
    path = INVALID / f"{fixture}.yaml"
    [problem] = problems_of(path)
    where = f"step {step!r}: " if step else ""
    assert problem.startswith(f"{path}: {where}field {field!r}: "), problem
    assert fragment in problem


def test_every_invalid_fixture_has_a_rule() -> None:
    assert {p.stem for p in INVALID.glob("*.yaml")} == {
        rule[0] for rule in RULES} | {"yaml_syntax", "duplicate_key"}


@pytest.mark.parametrize(("fixture", "message"), [
    ("yaml_syntax", "YAML syntax error at line 6, column 9: expected ',' or '}', but got ':'"),
    ("duplicate_key", "YAML syntax error at line 7, column 5: duplicate key 'timeout'"),
])
def test_yaml_errors_give_the_line(fixture: str, message: str) -> None:
    path = INVALID / f"{fixture}.yaml"
    assert problems_of(path) == [f"{path}: {message}"]


def test_a_file_with_several_problems_reports_all_of_them() -> None:
    path = FIXTURES / "several_problems.yaml"
    found = problems_of(path)
    expected = [
        ("", "defaults.timeout", "'5 parsecs'"),
        ("reserve", "retry.max_attempts", "greater than or equal to 1 (got 0)"),
        ("reserve", "action.service", "unknown service 'warehouse'"),
        ("charge", "timeout", "'2 fortnights'"),
        ("charge", "depends_on", "unknown step 'nope'"),
        ("charge", "action.path", "reads step 'ship'"),
        ("ship", "action.method", "(got 'FETCH')"),
        ("ship", "when", "unparsable expression"),
        ("email", "compensation", "runs after the pivot 'confirm'"),
    ]
    assert len(found) == len(expected)
    for text, (step, field, fragment) in zip(found, expected, strict=True):
        where = f"step {step!r}: " if step else ""
        assert text.startswith(f"{path}: {where}field {field!r}: "), text
        assert fragment in text
    with pytest.raises(DefinitionError) as caught:
        load_definition_file(path, SERVICE_NAMES)
    assert str(caught.value).splitlines() == found


def test_a_missing_or_empty_saga_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found"]
    empty = write(tmp_path, "empty.yaml", "# nothing\n")
    [problem] = problems_of(empty)
    assert "the file is empty" in problem


def test_services_load_with_url_or_urls() -> None:
    services = load_services(SERVICES)
    assert sorted(services) == ["cars", "flights", "hotels", "inventory", "notifications",
                                "orders", "payments", "shipping"]
    assert services["orders"].url == "http://127.0.0.1:9108"
    assert services["orders"].urls == ("http://127.0.0.1:9108",)
    many = ServiceConfig.model_validate({"name": "x", "urls": ["https://a/", "http://b:1"]})
    assert (many.url, many.urls) == ("https://a", ("https://a", "http://b:1"))
    assert ServiceConfig.model_validate(many.model_dump()) == many


def test_service_problems_name_file_service_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "services.yaml", """
services:
  ok: {url: "http://127.0.0.1:1"}
  ftp: {url: "ftp://host"}
  creds: {url: "http://user:secret@host"}
  none: {headers: {}}
  both: {url: "http://a", urls: ["http://b"]}
  typo: {url: "http://a", health: /h}
  tmpl: {url: "http://a", headers: {X-Key: "${input.key}"}}
  query: {url: "http://a/?token=hunter2"}
  leak: {url: "http://a", token: hunter2}
  Bad: {url: "http://a"}
  empty: {urls: []}
extra: 1
""")
    with pytest.raises(DefinitionError) as caught:
        load_services(path)
    found = [(p.file, p.field, p.message) for p in caught.value.problems]
    assert all(file == str(path) for file, _, _ in found)
    fields = [field for _, field, _ in found]
    assert fields == ["extra", "services.ftp.url", "services.creds.url", "services.none",
                      "services.both.urls", "services.typo.health",
                      "services.tmpl.headers", "services.query.url", "services.leak.token",
                      "services.Bad", "services.empty"]
    assert "secret" not in str(caught.value) and "hunter2" not in str(caught.value)
    assert "input.key" not in str(caught.value)


def test_service_reprs_and_errors_never_show_header_values() -> None:
    service = ServiceConfig.model_validate(
        {"name": "pay", "url": "http://a", "headers": {"X-Key": "literal-secret"}})
    assert "literal-secret" not in repr(service) and "literal-secret" not in str(service)
    assert "X-Key" in repr(service)
    with pytest.raises(ValueError) as caught:
        ServiceConfig.model_validate(
            {"name": "pay", "url": "nope", "headers": {"X-Key": "literal-secret"}})
    assert "literal-secret" not in str(caught.value)


def test_resolve_headers_reads_the_environment_at_call_time() -> None:
    service = load_services(SERVICES)["payments"]
    assert service.headers == {"Authorization": "Bearer ${env:PAYMENTS_TOKEN}"}
    resolved = resolve_headers(service, {"PAYMENTS_TOKEN": "t0ken"})
    assert resolved == {"Authorization": "Bearer t0ken"}
    with pytest.raises(MissingEnvironmentVariable) as caught:
        resolve_headers(service, {})
    assert str(caught.value) == ("service 'payments': header 'Authorization' needs environment "
                                 "variable PAYMENTS_TOKEN, which is not set")
    with pytest.raises(ValueError, match="line break") as broken:
        resolve_headers(service, {"PAYMENTS_TOKEN": "a\r\nX-Evil: 1"})
    assert "Evil" not in str(broken.value)


def test_resolve_headers_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYMENTS_TOKEN", "from-env")
    service = load_services(SERVICES)["payments"]
    assert resolve_headers(service) == {"Authorization": "Bearer from-env"}


def test_the_registry_serves_the_highest_version_by_default(tmp_path: Path) -> None:
    write(tmp_path, "s1.yaml", saga_text(version=1))
    write(tmp_path, "s3.yml", saga_text(version=3))
    write(tmp_path, "s2.yaml", saga_text(version=2))
    write(tmp_path, "other.yaml", saga_text(name="other"))
    write(tmp_path, "notes.txt", "not a saga")
    registry = load_registry(tmp_path, SERVICES)
    assert registry.names() == ["other", "s"]
    assert registry.versions("s") == [1, 2, 3]
    assert registry.get("s").version == 3
    assert registry.get("s", 2).version == 2
    assert [(d.name, d.version) for d in registry.all()] == [("other", 1), ("s", 1), ("s", 2),
                                                             ("s", 3)]
    assert registry.source(registry.get("s")) == str(tmp_path / "s3.yml")
    assert "orders" in registry.services
    with pytest.raises(UnknownSaga, match="unknown saga 'nope' \\(known: other, s\\)"):
        registry.get("nope")
    with pytest.raises(UnknownSaga):
        registry.versions("nope")
    with pytest.raises(UnknownVersion, match="saga 's' has no version 9 \\(versions: 1, 2, 3\\)"):
        registry.get("s", 9)


def test_the_registry_is_immutable(tmp_path: Path) -> None:
    write(tmp_path, "s.yaml", saga_text())
    registry = load_registry(tmp_path, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        registry.services = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        registry.sagas["x"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        registry.sagas["s"][2] = registry.get("s")  # type: ignore[index]
    with pytest.raises(ValueError, match="given twice"):
        Registry.of([registry.get("s"), registry.get("s")])


def test_registry_problems_are_collected_from_every_file(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", saga_text(version=1))
    write(tmp_path, "b.yaml", saga_text(version=1))
    write(tmp_path, "c.yaml", saga_text(name="c", service="nowhere"))
    write(tmp_path, "d.yaml", "name: [\n")
    with pytest.raises(DefinitionError) as caught:
        load_registry(tmp_path, SERVICES)
    found = str(caught.value).splitlines()
    assert len(found) == 3
    assert found[0] == (f"{tmp_path / 'b.yaml'}: field 'version': saga 's' version 1 is also "
                        f"defined in {tmp_path / 'a.yaml'}; each (name, version) must be unique")
    assert found[1].startswith(f"{tmp_path / 'c.yaml'}: step 'a': field 'action.service'")
    assert found[2].startswith(f"{tmp_path / 'd.yaml'}: YAML syntax error at line 2")


def test_a_missing_services_file_is_a_problem_next_to_saga_problems(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", saga_text(service="nowhere") + "  - {name: b}\n")
    with pytest.raises(DefinitionError) as caught:
        load_registry(tmp_path, tmp_path / "services.yaml")
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'services.yaml'}: services file not found",
        f"{tmp_path / 'a.yaml'}: step 'b': field 'action': required field is missing",
    ]


def test_a_missing_saga_directory(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="saga directory not found"):
        load_registry(tmp_path / "nope", None)


def test_cli_validate_prints_a_summary_per_saga(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(SAGAS), "--services", str(SERVICES)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"order_fulfillment v1: 5 steps, pivot confirm_order ({SAGAS / 'order_fulfillment.yaml'})",
        f"trip_booking v1: 5 steps, pivot confirm ({SAGAS / 'trip_booking.yaml'})",
    ]


def test_cli_validate_prints_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(FIXTURES / "several_problems.yaml", tmp_path)
    shutil.copy(INVALID / "cycle.yaml", tmp_path)
    assert main(["validate", str(tmp_path), "--services", str(SERVICES)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith(f"{tmp_path / 'cycle.yaml'}: step 'first': field 'depends_on'")
    assert all(line.startswith(str(tmp_path)) for line in lines)
    assert err == "10 problems found\n"


def test_cli_validate_uses_the_current_directory_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sagas").mkdir()
    write(tmp_path / "sagas", "s.yaml", saga_text())
    assert main(["validate"]) == 1
    assert capsys.readouterr().out == "services.yaml: services file not found\n"
    shutil.copy(SERVICES, tmp_path / "services.yaml")
    assert main(["validate"]) == 0
    assert capsys.readouterr().out == "s v1: 1 step, no pivot (sagas/s.yaml)\n"


def test_cli_validate_fails_on_an_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path), "--services", str(SERVICES)]) == 1
    assert "no saga files" in capsys.readouterr().err


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "validate" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert main(["frobnicate"]) == 2


def test_the_installed_script_runs_validate() -> None:
    script = Path(sys.executable).with_name("sagaray")
    clean = subprocess.run(
        [str(script), "validate", str(SAGAS), "--services", str(SERVICES)],
        capture_output=True, text=True, timeout=60, check=False)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.count("\n") == 2
    broken = subprocess.run(
        [str(script), "validate", str(INVALID), "--services", str(SERVICES)],
        capture_output=True, text=True, timeout=60, check=False)
    assert broken.returncode == 1
    assert f"{INVALID / 'cycle.yaml'}: step 'first': field 'depends_on'" in broken.stdout
    assert broken.stdout.count("\n") == len(RULES) + 2
