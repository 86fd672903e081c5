"""Run several demo services at once: in the current loop for tests and the demo, or blocking.

``start_services`` and ``run_all`` read each service's token variable (only
``FLIGHTS_TOKEN``) from ``environ`` (``os.environ`` by default), as a service
started from a shell would; pass ``configs`` or ``environ={}`` to decide it in code.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from services.app import build_app, config_from_env
from services.client import add_fault, clear_faults, fetch_ledger, reset
from services.common import ServiceConfig
from services.instances import RunningInstances, start_instances
from services.registry import DEFAULT_PORTS, SERVICE_NAMES, SPECS, get_spec
from services.serve import (
    DEFAULT_HOST,
    RunningServices,
    print_urls,
    serve_until_signalled,
    start_apps,
)
from services.tracing import instrument

__all__ = [
    "RunningInstances",
    "RunningServices",
    "add_fault",
    "clear_faults",
    "fetch_ledger",
    "render_services_yaml",
    "reset",
    "run_all",
    "start_instances",
    "start_services",
    "write_services_file",
]


def _apps(
    names: Iterable[str] | None,
    configs: Mapping[str, ServiceConfig] | None,
    environ: Mapping[str, str] | None,
) -> dict[str, web.Application]:
    apps: dict[str, web.Application] = {}
    for name in SERVICE_NAMES if names is None else names:
        spec = get_spec(name)
        config = (configs or {}).get(name) or config_from_env(spec, environ)
        apps[name] = build_app(spec, config)
        instrument(apps[name], name, environ)
    return apps


async def start_services(
    names: list[str] | None = None,
    host: str = DEFAULT_HOST,
    ports: dict[str, int] | None = None,
    *,
    configs: Mapping[str, ServiceConfig] | None = None,
    environ: Mapping[str, str] | None = None,
) -> RunningServices:
    """Start the chosen services (all by default) in this event loop.

    Without ``ports`` every service gets a free port; ``running.urls`` tells which.
    """
    apps = _apps(names, configs, environ)
    return await start_apps(apps, host, ports or {})


def render_services_yaml(urls: Mapping[str, str | Sequence[str]],
                         traffic: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A services file for ``urls`` (a list gives ``urls:``, several instances); a service
    with a token variable gets its header, and ``traffic[name]`` its traffic fields
    (``health_path``, ``outlier``, ``max_concurrency``... as YAML flow values)."""
    lines = ["# Demo services (python -m services.<name>, or `sagaray services`).", "services:"]
    for name, url in urls.items():
        where = f"url: {url}" if isinstance(url, str) else f"urls: [{', '.join(url)}]"
        lines += [f"  {name}:", f"    {where}"]
        lines += [f"    {key}: {json.dumps(value)}"
                  for key, value in (traffic or {}).get(name, {}).items()]
        spec = SPECS.get(name)
        if spec is not None and spec.token_env:
            header = f'"Bearer ${{env:{spec.token_env}}}"'
            lines.append(f"    headers: {{Authorization: {header}}}")
    return "\n".join(lines) + "\n"


def write_services_file(urls: Mapping[str, str | Sequence[str]], path: str | Path,
                        traffic: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write ``render_services_yaml(urls, traffic)`` to ``path`` (blocking file I/O)."""
    target = Path(path)
    target.write_text(render_services_yaml(urls, traffic), encoding="utf-8")
    return target


def run_all(
    host: str = DEFAULT_HOST,
    ports: dict[str, int] | None = None,
    names: list[str] | None = None,
    services_file: str | Path | None = None,
) -> None:
    """Serve the services (default ports 9101..9108) until SIGINT/SIGTERM, printing URLs.

    ``ports`` overrides some or all default ports (0 picks a free one);
    ``services_file`` also writes a services file for the URLs actually bound.
    """
    chosen = list(SERVICE_NAMES) if names is None else names
    bound = {name: DEFAULT_PORTS[name] for name in chosen} | (ports or {})
    apps = _apps(chosen, None, None)

    def ready(running: RunningServices) -> None:
        print_urls(running)
        if services_file is not None:
            print(f"services file: {write_services_file(running.urls, services_file)}")
        print("Ctrl-C stops the services.", flush=True)

    asyncio.run(serve_until_signalled(apps, host, bound, ready))
