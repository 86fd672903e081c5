"""CLI subcommands that run the coordinator or talk to its API.

``serve`` runs the control plane; ``start``, ``status``, ``list``, ``cancel`` and
``resume`` are thin clients of the HTTP API (``--url``), printing its JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from coordinator.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, add_services_argument

DEFAULT_URL = os.environ.get("SAGARAY_URL", "http://127.0.0.1:8080")


def _url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"API base URL (default: $SAGARAY_URL or {DEFAULT_URL})")


async def _request(method: str, url: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.request(method, url, json=body, headers=headers) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text) if text else None
        except ValueError:
            return response.status, text


def _call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> int:
    try:
        status, payload = asyncio.run(_request(method, url, body, headers))
    except aiohttp.ClientError as error:
        print(f"cannot reach {url}: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(payload, indent=2))
    if isinstance(payload, dict) and "links" in payload and "trace" in payload["links"]:
        print(f"trace: {payload['links']['trace']}", file=sys.stderr)
    return EXIT_OK if status < 400 else EXIT_FAILED


def _start_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("saga")
    parser.add_argument("--input", default="{}", help="the input as JSON, or @FILE")
    parser.add_argument("--version", type=int, dest="saga_version")
    parser.add_argument("--idempotency-key")
    parser.add_argument("--wait", nargs="?", const=60.0, type=float, metavar="SECONDS",
                        help="hold until the execution ends (at most 60 s)")
    _url_argument(parser)


def _run_start(args: argparse.Namespace) -> int:
    text = Path(args.input[1:]).read_text() if args.input.startswith("@") else args.input
    try:
        value = json.loads(text)
    except ValueError as error:
        print(f"--input is not JSON: {error}", file=sys.stderr)
        return EXIT_USAGE
    query = []
    if args.saga_version is not None:
        query.append(f"version={args.saga_version}")
    if args.wait is not None:
        query.append(f"wait={args.wait:g}")
    url = f"{args.url}/v1/sagas/{args.saga}/executions" + ("?" + "&".join(query) if query else "")
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    return _call("POST", url, {"input": value}, headers)


def _id_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("execution_id")
    _url_argument(parser)


def _run_status(args: argparse.Namespace) -> int:
    return _call("GET", f"{args.url}/v1/executions/{args.execution_id}")


def _run_cancel(args: argparse.Namespace) -> int:
    return _call("POST", f"{args.url}/v1/executions/{args.execution_id}/cancel", {})


def _run_resume(args: argparse.Namespace) -> int:
    return _call("POST", f"{args.url}/v1/executions/{args.execution_id}/resume")


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--saga")
    parser.add_argument("--status")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--cursor")
    _url_argument(parser)


def _run_list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("saga", args.saga), ("status", args.status),
                                ("limit", str(args.limit)), ("cursor", args.cursor)) if v}
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return _call("GET", f"{args.url}/v1/executions?{query}")


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--host", default=env("SAGARAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("SAGARAY_PORT", "8080")))
    parser.add_argument("--sagas", default=env("SAGARAY_SAGAS", "sagas"), metavar="DIR")
    add_services_argument(parser)
    parser.set_defaults(services=env("SAGARAY_SERVICES", "services.yaml"))
    parser.add_argument("--journal", default=env("SAGARAY_JOURNAL",
                                                 "sqlite:///.sagaray/journal.db"), metavar="URL")
    parser.add_argument("--ray-address", default=env("SAGARAY_RAY_ADDRESS"), metavar="ADDR",
                        help="join a running Ray cluster ('auto' finds a local one); "
                             "default: start a local Ray")
    parser.add_argument("--hosts", type=int, default=None,
                        help="SagaHost actors in the pool (default: the cluster's CPU count)")
    parser.add_argument("--namespace", default=env("SAGARAY_NAMESPACE", "sagaray"))
    parser.add_argument("--jaeger-url", default=env("SAGARAY_JAEGER_URL"))
    parser.add_argument("--lease-seconds", type=float,
                        default=float(env("SAGARAY_LEASE_SECONDS", "10")),
                        help="how long a host owns an execution without renewing (default 10)")


def _run_serve(args: argparse.Namespace) -> int:
    from coordinator.server import ServeOptions, init_ray, serve

    options = ServeOptions(
        host=args.host, port=args.port, sagas_dir=Path(args.sagas),
        services_file=Path(args.services), journal_url=args.journal,
        ray_address=args.ray_address, hosts=args.hosts, namespace=args.namespace,
        jaeger_url=args.jaeger_url, lease_seconds=args.lease_seconds)
    init_ray(options.ray_address, options.namespace)
    asyncio.run(serve(options))
    return EXIT_OK


def _services_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="services to run (default: all)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--services-file", metavar="FILE",
                        help="also write a services file for the bound URLs")


def _run_services(args: argparse.Namespace) -> int:
    from services.runner import run_all

    run_all(args.host, names=args.names or None, services_file=args.services_file)
    return EXIT_OK


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080,
                        help="API port (a free one is used when it is taken)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the coordinator and services up after the sagas end")


def _run_demo(args: argparse.Namespace) -> int:
    from coordinator.demo import main as demo_main

    return demo_main(args.port, args.keep)


CLIENT_COMMANDS: list[Command] = [
    Command("serve", "run the coordinator: HTTP API, journal and SagaHost pool on Ray",
            _serve_arguments, _run_serve),
    Command("start", "start a saga execution through the API", _start_arguments, _run_start),
    Command("status", "show an execution with its steps", _id_arguments, _run_status),
    Command("list", "list executions, newest first", _list_arguments, _run_list),
    Command("cancel", "cancel an execution (it compensates)", _id_arguments, _run_cancel),
    Command("resume", "resume a failed execution", _id_arguments, _run_resume),
    Command("services", "run the demo microservices", _services_arguments, _run_services),
    Command("demo", "local Ray, SQLite, demo services and sagas that succeed and compensate",
            _demo_arguments, _run_demo),
]
