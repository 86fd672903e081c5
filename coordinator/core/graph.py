"""The dependency graph of a saga's steps, and what each step's templates read.

Built once per definition (``SagaDefinition.graph``) and tolerant of broken
input, so validation can use the same code to report cycles and bad references.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from coordinator.core.definition import Call, Step
from coordinator.core.templates import (
    TemplateError,
    compile_expression,
    placeholders,
    step_references,
)


@dataclass(frozen=True)
class StepReads:
    """The steps read by a step's ``when``, action and compensation templates."""

    when: frozenset[str] = frozenset()
    action: frozenset[str] = frozenset()
    compensation: frozenset[str] = frozenset()
    errors: tuple[tuple[str, str], ...] = ()  # (field, message) for unparsable expressions


@dataclass(frozen=True)
class Graph:
    order: tuple[str, ...]
    dependencies: dict[str, frozenset[str]]
    dependents: dict[str, frozenset[str]]
    ancestors: dict[str, frozenset[str]] = field(default_factory=dict)
    descendants: dict[str, frozenset[str]] = field(default_factory=dict)
    reads: dict[str, StepReads] = field(default_factory=dict)
    cycle: tuple[str, ...] = ()
    pivot: str | None = None

    def recovers_output(self, step: str) -> bool:
        """True when the step's compensation reads its own output, so an unknown
        outcome must first be learned by re-sending the action."""
        return step in self.reads[step].compensation


def build_graph(steps: Iterable[Step]) -> Graph:
    steps = list(steps)
    names = [step.name for step in steps]
    known = set(names)
    dependencies = {s.name: frozenset(d for d in s.depends_on if d in known) for s in steps}
    dependents: dict[str, set[str]] = {name: set() for name in names}
    for name, deps in dependencies.items():
        for dep in deps:
            dependents[dep].add(name)
    cycle = find_cycle(names, dependencies)
    ancestors = {name: _closure(name, dependencies) for name in names}
    descendants = {name: _closure(name, {k: frozenset(v) for k, v in dependents.items()})
                   for name in names}
    pivots = [s.name for s in steps if s.pivot]
    return Graph(
        order=tuple(names),
        dependencies=dependencies,
        dependents={k: frozenset(v) for k, v in dependents.items()},
        ancestors=ancestors,
        descendants=descendants,
        reads={s.name: step_reads(s) for s in steps},
        cycle=cycle,
        pivot=pivots[0] if pivots else None,
    )


def find_cycle(names: list[str], dependencies: dict[str, frozenset[str]]) -> tuple[str, ...]:
    """One dependency cycle as a path of step names, or ``()`` when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> tuple[str, ...]:
        state[name] = 1
        stack.append(name)
        for dep in sorted(dependencies.get(name, ())):
            if state.get(dep) == 1:
                return (*stack[stack.index(dep):], dep)
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[name] = 2
        return ()

    for name in names:
        if name not in state and (found := visit(name)):
            return found
    return ()


def _closure(start: str, edges: dict[str, frozenset[str]]) -> frozenset[str]:
    seen: set[str] = set()
    todo = list(edges.get(start, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges.get(name, ()))
    seen.discard(start)
    return frozenset(seen)


def step_reads(step: Step) -> StepReads:
    """What one step's templates read; usable on steps whose names collide."""
    errors: list[tuple[str, str]] = []
    when: frozenset[str] = frozenset()
    if step.when is not None:
        when = _expression_reads([step.when], "when", errors)
    action = _call_reads(step.action, "action", errors)
    compensation = (_call_reads(step.compensation, "compensation", errors)
                    if step.compensation else frozenset())
    return StepReads(when, action, compensation, tuple(errors))


def _call_reads(call: Call, prefix: str, errors: list[tuple[str, str]]) -> frozenset[str]:
    found: set[str] = set()
    for name, value in (("path", call.path), ("body", call.body), ("headers", call.headers)):
        found |= _expression_reads(placeholders(value), f"{prefix}.{name}", errors)
    return frozenset(found)


def _expression_reads(
    texts: list[str], where: str, errors: list[tuple[str, str]]
) -> frozenset[str]:
    found: set[str] = set()
    for text in texts:
        try:
            found |= step_references(compile_expression(text))
        except TemplateError as error:
            errors.append((where, str(error)))
    return frozenset(found)


def parallel_width(graph: Graph) -> int:
    """The most steps that can run at once: the largest set of pairwise independent steps.

    By Dilworth's theorem that is the step count minus a maximum matching in the
    bipartite graph "u before v" (u an ancestor of v); Kuhn's augmenting paths find
    it. Cubic at worst, run once per definition at load time on at most MAX_STEPS.
    """
    if graph.cycle:
        return 0
    names = list(graph.order)
    matched_to: dict[str, str] = {}  # later step -> the earlier step matched to it

    def augment(earlier: str, seen: set[str]) -> bool:
        for later in graph.descendants[earlier]:
            if later in seen:
                continue
            seen.add(later)
            if later not in matched_to or augment(matched_to[later], seen):
                matched_to[later] = earlier
                return True
        return False

    matching = sum(1 for name in names if augment(name, set()))
    return len(names) - matching
