"""Reading saga files and the services file from disk into an immutable registry.

All problems of all files are collected before anything is raised, so a single
:class:`DefinitionError` lists everything that needs fixing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from coordinator.core.definition import NAME_PATTERN, SagaDefinition
from coordinator.core.documents import problems_from_error, validate_document
from coordinator.core.validation import Problem
from coordinator.traffic.policy import TrafficPolicy

_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_ANY_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")
_HIDDEN = "***"


class DefinitionError(Exception):
    """One or more files are invalid; ``problems`` lists every one of them."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class RegistryLookupError(LookupError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownSaga(RegistryLookupError):
    """No saga file defines this name."""


class UnknownVersion(RegistryLookupError):
    """The saga exists, but not in the version asked for."""


class MissingEnvironmentVariable(KeyError):
    """A service header needs an environment variable that is not set.

    A ``KeyError`` so that callers treating any missing lookup alike also catch it.
    """

    def __init__(self, service: str, header: str, variable: str) -> None:
        self.service, self.header, self.variable = service, header, variable
        super().__init__(f"service {service!r}: header {header!r} needs environment "
                         f"variable {variable}, which is not set")

    def __str__(self) -> str:
        return str(self.args[0])


# --- YAML ----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that rejects a key given twice, which would silently drop a value."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def read_yaml(path: Path) -> tuple[Any, list[Problem]]:
    """The parsed document, or ``None`` and the problem that prevented reading it."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Problem(file, None, "", "file not found")]
    except (OSError, UnicodeDecodeError) as error:
        return None, [Problem(file, None, "", f"cannot read file: {error}")]
    try:
        return yaml.load(text, Loader=_StrictLoader), []
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = error.problem or error.context or "invalid YAML"
        return None, [Problem(file, None, "", f"YAML syntax error at {where}{what}")]
    except yaml.YAMLError as error:
        return None, [Problem(file, None, "", f"YAML syntax error: {error}")]


# --- saga files ----------------------------------------------------------------------


def load_definition_file(path: Path | str, service_names: set[str] | None = None) -> SagaDefinition:
    """One saga file, fully checked; services only when ``service_names`` is given."""
    definition, problems = _definition_or_problems(Path(path), service_names)
    if definition is None:
        raise DefinitionError(problems)
    return definition


def _definition_or_problems(
    path: Path, service_names: set[str] | None
) -> tuple[SagaDefinition | None, list[Problem]]:
    raw, problems = read_yaml(path)
    if problems:
        return None, problems
    return validate_document(raw, file=str(path), service_names=service_names)


# --- services ------------------------------------------------------------------------


class ServiceConfig(TrafficPolicy):
    """A named HTTP service: one ``url`` or several ``urls`` (instances), and the
    traffic fields of :class:`TrafficPolicy`. Header values are templates
    (``${env:NAME}``) resolved only when a request is made, so secrets never sit in
    this object or its repr."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=NAME_PATTERN)
    url: str = Field(default="", validate_default=True)
    urls: tuple[str, ...] = Field(default=(), validate_default=True)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _one_url_form(cls, raw: Any) -> Any:
        # Never raises: errors here would show the whole input, headers included.
        if not isinstance(raw, dict):
            return raw
        url, urls = raw.get("url"), raw.get("urls")
        if urls is None and url is not None:
            return {**raw, "urls": [url]}
        if url is None and isinstance(urls, list | tuple) and urls:
            return {**raw, "url": urls[0]}
        return raw

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value:
            raise ValueError("give url: http(s)://HOST:PORT, or urls: a list of them")
        return _checked_url(value)

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if "url" not in info.data:
            return value  # url (urls[0] when only urls is given) failed, and says so already
        checked = tuple(_checked_url(url) for url in value)
        if not checked or checked[0] != info.data["url"]:
            raise ValueError("give url or urls, not both")
        if len(set(checked)) != len(checked):
            raise ValueError("urls lists the same instance twice")
        return checked

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            if not name.strip() or any(c in name for c in ":\r\n "):
                raise ValueError(f"invalid header name {name!r}")
            leftover = _ENV_REFERENCE.sub("", template)
            if _ANY_PLACEHOLDER.search(leftover) or "\n" in leftover or "\r" in leftover:
                raise ValueError(f"header {name!r}: only ${{env:NAME}} placeholders are "
                                 "allowed, on a single line")
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for key, value in super().__repr_args__():
            yield key, ({k: _HIDDEN for k in value} if key == "headers" else value)


def _checked_url(url: str) -> str:
    # Messages leave the url out: a mistaken one may carry a password or a token.
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValueError("credentials do not belong in the url; use a header with ${env:NAME}")
    if parts.query or parts.fragment:
        raise ValueError("the url must not have a query or fragment")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the url must start with http:// or https://, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("the url has no host")
    # Step paths start with '/', so a trailing '/' here would double it.
    return url.rstrip("/")


def load_services(path: Path | str) -> dict[str, ServiceConfig]:
    """The services file as ``{name: ServiceConfig}``; every problem raised at once."""
    services, problems = _services_or_problems(Path(path))
    if problems:
        raise DefinitionError(problems)
    return services


def _services_or_problems(path: Path) -> tuple[dict[str, ServiceConfig], list[Problem]]:
    file = str(path)
    if not path.exists():
        return {}, [Problem(file, None, "", "services file not found")]
    raw, problems = read_yaml(path)
    if problems:
        return {}, problems
    entries = raw.get("services") if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        return {}, [Problem(file, None, "services",
                            "the file must hold a mapping 'services: {NAME: {url, headers}}'")]
    problems = [Problem(file, None, str(key), "unknown field (only 'services' is allowed)")
                for key in raw if key != "services"]
    services: dict[str, ServiceConfig] = {}
    for name, entry in entries.items():
        config, found = _service(file, raw, str(name), entry)
        problems += found
        if config is not None:
            services[config.name] = config
    return services, problems


def _service(
    file: str, raw: dict[str, Any], name: str, entry: object
) -> tuple[ServiceConfig | None, list[Problem]]:
    where = f"services.{name}"
    if not isinstance(entry, dict):
        return None, [Problem(file, None, where, "must be a mapping with url and headers")]
    if "name" in entry:
        return None, [Problem(file, None, f"{where}.name", "the name is the key; remove it")]
    if "url" in entry and "urls" in entry:
        return None, [Problem(file, None, f"{where}.urls", "give url or urls, not both")]
    try:
        return ServiceConfig.model_validate({**entry, "name": name}), []
    except ValidationError as error:
        problems = problems_from_error(error, raw, file=file, prefix=("services", name),
                                       hide_values=True)
        return None, [_named_service(p, where) for p in problems]


def _named_service(problem: Problem, where: str) -> Problem:
    # The service name itself is the mapping key, so its pattern error belongs there.
    if problem.field == where and "pattern" in problem.message:
        return Problem(problem.file, None, where, f"invalid service name: {problem.message}")
    return problem


def resolve_headers(
    service: ServiceConfig, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The service's headers with ``${env:NAME}`` read from the environment now.

    Call at request time and never store, log or return the result.
    """
    env = os.environ if environ is None else environ
    return {header: _resolved(service.name, header, template, env)
            for header, template in service.headers.items()}


def _resolved(service: str, header: str, template: str, env: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        variable = match.group(1)
        if variable not in env:
            raise MissingEnvironmentVariable(service, header, variable)
        value = env[variable]
        if "\n" in value or "\r" in value:
            raise ValueError(f"service {service!r}: header {header!r}: environment "
                             f"variable {variable} holds a line break")
        return value

    return _ENV_REFERENCE.sub(substitute, template)


# --- registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """Every loaded saga by name and version, plus the services they call."""

    sagas: Mapping[str, Mapping[int, SagaDefinition]]
    services: Mapping[str, ServiceConfig] = field(default_factory=lambda: MappingProxyType({}))
    sources: Mapping[tuple[str, int], str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(
        cls,
        definitions: Iterable[SagaDefinition],
        services: Mapping[str, ServiceConfig] | None = None,
        sources: Mapping[tuple[str, int], str] | None = None,
    ) -> Registry:
        """An immutable registry; two definitions with the same (name, version) fail."""
        by_name: dict[str, dict[int, SagaDefinition]] = {}
        for definition in definitions:
            versions = by_name.setdefault(definition.name, {})
            if definition.version in versions:
                raise ValueError(f"saga {definition.name!r} version {definition.version} "
                                 "is given twice")
            versions[definition.version] = definition
        return cls(
            sagas=MappingProxyType({name: MappingProxyType(dict(sorted(v.items())))
                                    for name, v in sorted(by_name.items())}),
            services=MappingProxyType(dict(services or {})),
            sources=MappingProxyType(dict(sources or {})),
        )

    def get(self, name: str, version: int | None = None) -> SagaDefinition:
        """The saga in ``version``, or in its highest version when none is asked for."""
        versions = self.sagas.get(name)
        if not versions:
            known = ", ".join(self.sagas) or "none"
            raise UnknownSaga(f"unknown saga {name!r} (known: {known})")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            have = ", ".join(str(v) for v in versions)
            raise UnknownVersion(f"saga {name!r} has no version {version} (versions: {have})")
        return versions[version]

    def names(self) -> list[str]:
        return list(self.sagas)

    def versions(self, name: str) -> list[int]:
        """Ascending versions of ``name``; raises :class:`UnknownSaga` when there are none."""
        if name not in self.sagas:
            self.get(name)
        return list(self.sagas[name])

    def all(self) -> list[SagaDefinition]:
        """Every definition, by name then version."""
        return [d for versions in self.sagas.values() for d in versions.values()]

    def source(self, definition: SagaDefinition) -> str | None:
        """The file the definition was loaded from, when it came from one."""
        return self.sources.get(definition.key)

    def __repr__(self) -> str:
        sagas = [f"{d.name} v{d.version}" for d in self.all()]
        return f"Registry(sagas={sagas}, services={sorted(self.services)})"


def saga_files(sagas_dir: Path | str) -> list[Path]:
    directory = Path(sagas_dir)
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_registry(sagas_dir: Path | str, services_path: Path | str | None) -> Registry:
    """Every ``*.yaml``/``*.yml`` saga in ``sagas_dir``; services are checked when a
    services file is given. Raises one :class:`DefinitionError` listing all problems."""
    services: dict[str, ServiceConfig] = {}
    problems: list[Problem] = []
    if services_path is not None:
        services, problems = _services_or_problems(Path(services_path))
    # A broken services file makes every service look unknown; skip that check then.
    names = set(services) if services_path is not None and not problems else None
    directory = Path(sagas_dir)
    if not directory.is_dir():
        raise DefinitionError([*problems, Problem(str(directory), None, "",
                                                  "saga directory not found")])
    loaded: dict[tuple[str, int], tuple[SagaDefinition, str]] = {}
    for path in saga_files(directory):
        definition, found = _definition_or_problems(path, names)
        problems += found
        if definition is None:
            continue
        if definition.key in loaded:
            problems.append(_duplicate(definition, loaded[definition.key][1], str(path)))
            continue
        loaded[definition.key] = (definition, str(path))
    if problems:
        raise DefinitionError(problems)
    return Registry.of((d for d, _ in loaded.values()), services,
                       {key: file for key, (_, file) in loaded.items()})


def _duplicate(definition: SagaDefinition, first: str, second: str) -> Problem:
    return Problem(second, None, "version",
                   f"saga {definition.name!r} version {definition.version} is also defined "
                   f"in {first}; each (name, version) must be unique")
