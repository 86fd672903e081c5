"""Semantic checks of saga definitions and the conversion of pydantic errors."""

from __future__ import annotations

import copy
import datetime
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.core.definition import SagaDefinition
from coordinator.core.documents import validate_document
from coordinator.core.templates import TemplateError, compile_expression, step_references
from coordinator.core.validation import Problem, check_definition

SERVICES = {"svc", "other"}


def call(path: str = "/x", **extra: Any) -> dict[str, Any]:
    return {"service": "svc", "path": path, **extra}


def step(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "action": call(f"/{name}"), **extra}


def saga(*steps: dict[str, Any], **extra: Any) -> SagaDefinition:
    return SagaDefinition.model_validate({"name": "t", "version": 1, "steps": list(steps),
                                          **extra})


def problems(*steps: dict[str, Any], **extra: Any) -> list[tuple[str | None, str, str]]:
    found = check_definition(saga(*steps, **extra), SERVICES)
    return [(p.step, p.field, p.message) for p in found]


def test_problem_str_names_file_step_and_field() -> None:
    problem = Problem("sagas/x.yaml", "book_car", "depends_on", "unknown step 'nope'")
    assert str(problem) == "sagas/x.yaml: step 'book_car': field 'depends_on': unknown step 'nope'"
    assert str(Problem(None, None, "version", "bad")) == "field 'version': bad"
    assert str(Problem("f.yaml", None, "", "file not found")) == "f.yaml: file not found"


def test_a_valid_dag_has_no_problems() -> None:
    assert problems(
        step("a"), step("b", depends_on=[]),
        step("c", depends_on=["a", "b"], when="steps.a.output.ok && input.go",
             action=call("/c/${steps.a.output.id}", headers={"X-B": "${steps.b.output.k}"}),
             compensation=call("/c/${steps.c.output.id}/${steps.a.output.id}")),
        step("d", action=call("/d", body={"from": "${steps.a.output.items[0]}"})),
    ) == []


def test_services_are_checked_only_when_names_are_given() -> None:
    definition = saga(step("a", action={"service": "nowhere", "path": "/"}))
    assert check_definition(definition, None) == []
    assert [p.field for p in check_definition(definition, set())] == ["action.service"]


def test_check_definition_puts_the_file_on_every_problem() -> None:
    definition = saga(step("a", depends_on=["x", "y"]))
    found = check_definition(definition, None, file="sagas/t.yaml")
    assert [str(p) for p in found] == [
        "sagas/t.yaml: step 'a': field 'depends_on': unknown step 'x'",
        "sagas/t.yaml: step 'a': field 'depends_on': unknown step 'y'",
    ]


def test_a_cycle_names_its_path() -> None:
    found = problems(step("a", depends_on=["c"]), step("b"), step("c"))
    assert found == [("a", "depends_on",
                      "dependency cycle: a -> c -> b -> a (each step depends on the next)")]


def test_a_step_depending_on_itself_is_a_cycle() -> None:
    assert [f for _, f, _ in problems(step("a", depends_on=["a"]))] == ["depends_on"]


def test_duplicate_names_do_not_also_report_the_echoed_cycle() -> None:
    found = problems(step("a"), step("a"))
    assert [(s, f) for s, f, _ in found] == [("a", "name")]


@pytest.mark.parametrize(("where", "extra"), [
    ("when", {"when": "steps.b.status"}),
    ("action.path", {"action": call("/${steps.b.output.id}")}),
    ("action.body", {"action": call(body={"x": ["${steps.b.output.id}"]})}),
    ("action.headers", {"action": call(headers={"X": "v-${steps.b.output.id}"})}),
    ("compensation.path", {"compensation": call("/${steps.b.output.id}")}),
])
def test_every_templated_field_may_read_only_ancestors(where: str, extra: dict[str, Any]) -> None:
    found = problems(step("a", **extra), step("b", depends_on=[]))
    assert found == [("a", where, "reads step 'b', which it does not depend on "
                                  "(add 'b' to depends_on, directly or through another step)")]


def test_ancestors_count_transitively() -> None:
    assert problems(step("a"), step("b"), step("c", when="steps.a.output.ok")) == []


def test_only_a_compensation_may_read_its_own_step() -> None:
    assert problems(step("a", compensation=call("/${steps.a.output.id}"))) == []
    found = problems(step("a", when="steps.a.status"))
    assert found == [("a", "when",
                      "reads its own step, which has no output before its action completes")]


def test_reading_an_unknown_step_is_named() -> None:
    assert problems(step("a", when="steps.ghost.output")) == [
        ("a", "when", "reads unknown step 'ghost'")]


@pytest.mark.parametrize("expression", ["steps", "keys(steps)", "steps.*.output",
                                        "input.x || steps", "steps[0]", "steps.[a, b]"])
def test_reading_steps_as_a_whole_is_rejected(expression: str) -> None:
    found = problems(step("a"), step("b", when=expression))
    assert [(s, f) for s, f, _ in found] == [("b", "when")]
    assert "`steps` as a whole" in found[0][2]


@pytest.mark.parametrize(("expression", "reads"), [
    ("input.car", set()),
    ("steps.a.output.id", {"a"}),
    ("steps.a[0]", {"a"}),
    ("steps.a.output.items[*].sku", {"a"}),
    ('steps."book-car".output', {"book-car"}),
    ("steps.a.status == 'ok' && steps.b.output", {"a", "b"}),
    ("input.steps", set()),
    ("length(steps)", {"*"}),
])
def test_step_references(expression: str, reads: set[str]) -> None:
    assert step_references(compile_expression(expression)) == reads


@pytest.mark.parametrize(("expression", "fragment"), [
    ("input.[", "incomplete expression"),
    ("input..id", "at column 6"),
    ("lenght(input.items)", "unknown function lenght()"),
    ("length(input.a, input.b)", "length() takes 1 argument(s), got 2"),
    ("  ", "empty expression"),
])
def test_unparsable_expressions_give_one_line_messages(expression: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_expression(expression)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_unparsable_placeholder_names_its_field() -> None:
    found = problems(step("a", compensation=call(body={"k": "${input.[}"})))
    assert [(s, f) for s, f, _ in found] == [("a", "compensation.body")]
    assert found[0][2].startswith("unparsable expression: invalid JMESPath 'input.['")


def test_pivot_rules() -> None:
    assert problems(step("a"), step("p", pivot=True), step("z")) == []
    found = problems(step("a"), step("p", pivot=True), step("q", pivot=True))
    assert found == [("q", "pivot",
                      "more than one pivot: 'p' is already the pivot (at most one allowed)")]


def test_a_pivot_must_be_ordered_against_every_step() -> None:
    found = problems(step("a"), step("p", pivot=True, depends_on=[]), step("b", depends_on=["a"]),
                     step("z", depends_on=["p"]))
    assert [(s, f) for s, f, _ in found] == [("p", "pivot")]
    assert "not ordered relative to 'a', 'b'" in found[0][2]


def test_steps_after_the_pivot_cannot_compensate() -> None:
    found = problems(step("p", pivot=True), step("b"),
                     step("c", compensation=call("/undo")))
    assert found == [("c", "compensation", "runs after the pivot 'p', so it is never "
                      "compensated (failures after the pivot are retried forward); remove it")]


def test_every_input_schema_error_is_reported_with_its_path() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "money"}, "b": {"minLength": -1}}}
    found = problems(step("a"), input_schema=schema)
    assert [(s, f) for s, f, _ in found] == [(None, "input_schema.properties.a.type"),
                                             (None, "input_schema.properties.b.minLength")]
    assert all("not a valid JSON Schema (2020-12)" in m for _, _, m in found)


def test_validate_document_returns_the_definition_when_clean() -> None:
    raw = {"name": "t", "version": 1, "steps": [step("a")]}
    definition, found = validate_document(raw, service_names=SERVICES)
    assert found == [] and definition is not None and definition.steps[0].name == "a"


@pytest.mark.parametrize("raw", [None, [], "text"])
def test_a_document_must_be_a_mapping(raw: object) -> None:
    definition, found = validate_document(raw, file="x.yaml")
    assert definition is None and len(found) == 1
    assert str(found[0]).startswith("x.yaml: the file is ")


def test_field_errors_name_the_step_and_the_value() -> None:
    raw = {"name": "t", "version": 1, "steps": [
        step("a"), step("b", timeout="5 parsecs", retry={"max_attempts": 0}),
        {"action": call(method="FETCH")},
    ]}
    _, found = validate_document(raw, file="t.yaml")
    assert [str(p) for p in found] == [
        "t.yaml: step 'b': field 'timeout': unparsable duration '5 parsecs': "
        "use a number with ms, s, m or h",
        "t.yaml: step 'b': field 'retry.max_attempts': "
        "Input should be greater than or equal to 1 (got 0)",
        "t.yaml: step 'steps[2]': field 'name': required field is missing",
        "t.yaml: step 'steps[2]': field 'action.method': "
        "Input should be 'GET', 'POST', 'PUT', 'PATCH' or 'DELETE' (got 'FETCH')",
    ]


def test_union_alternatives_are_one_problem_at_the_real_location() -> None:
    raw = {"name": "t", "version": 1, "steps": [
        step("a", retry_on=[503, 1.5]),
        step("b", action=call(body={"when": [datetime.date(2024, 1, 1)]})),
    ]}
    _, found = validate_document(raw)
    assert [(p.step, p.field) for p in found] == [("a", "retry_on[1]"),
                                                  ("b", "action.body.when[0]")]
    assert " or " in found[0].message and "(got 1.5)" in found[0].message


def test_semantic_problems_are_reported_next_to_field_errors() -> None:
    raw = {"name": "t", "version": 1, "defaults": {"timeout": "soon"}, "steps": [
        step("a", action={"service": "nowhere", "method": "FETCH", "path": "/"}),
        step("b", depends_on=["a", "ghost"], retry={"jitter": 7}),
        step("c", pivot=True), step("d", compensation=call()),
    ]}
    _, found = validate_document(raw, service_names=SERVICES)
    assert [(p.step, p.field) for p in found] == [
        (None, "defaults.timeout"), ("a", "action.method"), ("a", "action.service"),
        ("b", "retry.jitter"), ("b", "depends_on"), ("d", "compensation"),
    ]


def test_a_broken_service_field_is_not_also_reported_as_unknown() -> None:
    raw = {"name": "t", "version": 1,
           "steps": [step("a", action={"service": "Bad Name", "path": "/"})]}
    _, found = validate_document(raw, service_names=SERVICES)
    assert [(p.step, p.field) for p in found] == [("a", "action.service")]
    assert "should match pattern" in found[0].message


def test_broken_structure_stops_at_the_field_errors() -> None:
    raw = {"name": "t", "version": 1, "steps": [
        step("a", depends_on="b"), step("b", depends_on=["ghost"])]}
    _, found = validate_document(raw)
    assert [(p.step, p.field) for p in found] == [("a", "depends_on")]


def test_an_empty_step_list_is_too_short_but_broken_steps_are_not() -> None:
    _, found = validate_document({"name": "t", "version": 1, "steps": []})
    assert [p.field for p in found] == ["steps"]
    _, found = validate_document({"name": "t", "version": 1, "steps": [{"name": "a"}]})
    assert [(p.step, p.field) for p in found] == [("a", "action")]


BROKEN_VALUES: list[Any] = [None, 0, -1, 1.5, "", "x", "5 parsecs", "${steps.*}", "${input.[}",
                            [], {}, [1], {"a": 1}, True, "book_flight", ["nope"],
                            "/p/${steps.confirm.output.x}", float("inf")]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list) else []
    for key, value in items:
        found += _paths(value, (*prefix, key))
    return found


def _mutate(doc: dict[str, Any], rng: random.Random) -> None:
    *parents, last = rng.choice(_paths(doc))
    parent: Any = doc
    for part in parents:
        parent = parent[part]
    roll = rng.random()
    if roll < 0.3 and isinstance(parent, dict):
        del parent[last]
    elif roll < 0.4 and isinstance(parent, dict):
        parent[f"extra_{rng.randint(0, 9)}"] = rng.choice(BROKEN_VALUES)
    else:
        parent[last] = copy.deepcopy(rng.choice(BROKEN_VALUES))


def test_mutated_documents_give_one_line_problems_and_never_crash() -> None:
    root = Path(__file__).resolve().parents[2] / "sagas"
    originals = [yaml.safe_load(path.read_text()) for path in sorted(root.glob("*.yaml"))]
    rng = random.Random(7)
    for _ in range(1000):
        doc = copy.deepcopy(rng.choice(originals))
        for _ in range(rng.randint(1, 4)):
            _mutate(doc, rng)
        definition, found = validate_document(doc, service_names={"flights", "hotels"})
        assert (definition is None) == bool(found)
        assert all("\n" not in str(problem) for problem in found)
