"""CLI subcommands that run the coordinator or talk to its API.

``serve`` runs the control plane; ``start``, ``status``, ``list``, ``cancel`` and
``resume`` are thin clients of the HTTP API (``--url``, ``--token``), printing its JSON.

Every flag follows one precedence rule: the flag, else its ``SAGARAY_*`` environment
variable, else the default (the README's "Configuration" table lists them all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from coordinator.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, add_services_argument

if TYPE_CHECKING:
    from coordinator.server import ServeOptions

DEFAULT_URL = os.environ.get("SAGARAY_URL", "http://127.0.0.1:8080")
TOKEN_VARIABLE = "SAGARAY_TOKEN"
_TRUE = ("1", "true", "yes", "on")


def _url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"API base URL (default: $SAGARAY_URL or {DEFAULT_URL})")
    # The value is read at run time and never shown: --help must not print a token.
    parser.add_argument("--token", default=None, metavar="TOKEN",
                        help=f"API bearer token (default: ${TOKEN_VARIABLE}; prefer the "
                             f"variable, a command line is visible to other users)")


def _auth(args: argparse.Namespace, headers: dict[str, str] | None = None
          ) -> dict[str, str] | None:
    """``headers`` plus ``Authorization: Bearer`` when a token is given (flag, then variable)."""
    token = args.token or os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        return headers
    return {**(headers or {}), "Authorization": f"Bearer {token}"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


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
    return _call("POST", url, {"input": value}, _auth(args, headers))


def _id_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("execution_id")
    _url_argument(parser)


def _run_status(args: argparse.Namespace) -> int:
    return _call("GET", f"{args.url}/v1/executions/{args.execution_id}", headers=_auth(args))


def _run_cancel(args: argparse.Namespace) -> int:
    return _call("POST", f"{args.url}/v1/executions/{args.execution_id}/cancel", {},
                 _auth(args))


def _run_resume(args: argparse.Namespace) -> int:
    return _call("POST", f"{args.url}/v1/executions/{args.execution_id}/resume",
                 headers=_auth(args))


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
    return _call("GET", f"{args.url}/v1/executions?{query}", headers=_auth(args))


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    # String defaults go through ``type`` too: a bad SAGARAY_PORT is a usage error.
    env = os.environ.get
    parser.add_argument("--host", default=env("SAGARAY_HOST", "127.0.0.1"),
                        help="address to bind (default 127.0.0.1; any other needs API tokens "
                             "or --insecure)")
    parser.add_argument("--port", type=int, default=env("SAGARAY_PORT", "8080"))
    parser.add_argument("--sagas", default=env("SAGARAY_SAGAS", "sagas"), metavar="DIR")
    add_services_argument(parser)
    parser.add_argument("--journal", default=env("SAGARAY_JOURNAL",
                                                 "sqlite:///.sagaray/journal.db"), metavar="URL")
    parser.add_argument("--ray-address", default=env("SAGARAY_RAY_ADDRESS"), metavar="ADDR",
                        help="join a running Ray cluster ('auto' finds a local one); "
                             "default: start a local Ray")
    parser.add_argument("--hosts", type=int, default=env("SAGARAY_HOSTS"),
                        help="a fixed pool of N SagaHost actors (default: the cluster's CPU "
                             "count); see --min-hosts/--max-hosts for an elastic one")
    parser.add_argument("--min-hosts", type=int, default=env("SAGARAY_MIN_HOSTS"),
                        help="elastic pool: never fewer SagaHosts than this (default 1)")
    parser.add_argument("--max-hosts", type=int, default=env("SAGARAY_MAX_HOSTS"),
                        help="elastic pool: never more SagaHosts than this (default: the "
                             "larger of --min-hosts and the cluster's CPU count)")
    parser.add_argument("--target-per-host", type=float,
                        default=env("SAGARAY_TARGET_PER_HOST", "100"),
                        help="elastic pool: executions in flight per host above which it "
                             "grows (default 100)")
    parser.add_argument("--scale-down-after", type=float,
                        default=env("SAGARAY_SCALE_DOWN_AFTER", "60"),
                        help="elastic pool: seconds of low load before one host is drained "
                             "(default 60)")
    parser.add_argument("--host-cpus", type=float, default=env("SAGARAY_HOST_CPUS", "0"),
                        help="CPUs each SagaHost requests from Ray (default 0); above 0, "
                             "a Ray autoscaler adds nodes for new hosts")
    parser.add_argument("--namespace", default=env("SAGARAY_NAMESPACE", "sagaray"))
    parser.add_argument("--jaeger-url", default=env("SAGARAY_JAEGER_URL"))
    parser.add_argument("--lease-seconds", type=float,
                        default=env("SAGARAY_LEASE_SECONDS", "10"),
                        help="how long a host owns an execution without renewing (default 10)")
    parser.add_argument("--api-tokens", default=env("SAGARAY_API_TOKENS_FILE"), metavar="FILE",
                        help="API bearer tokens, lines 'read TOKEN' / 'write TOKEN' (also "
                             "$SAGARAY_API_READ_TOKEN, $SAGARAY_API_WRITE_TOKEN)")
    parser.add_argument("--insecure", action="store_true", default=_env_flag("SAGARAY_INSECURE"),
                        help="allow serving beyond loopback without API tokens")
    parser.add_argument("--max-in-flight", type=_positive,
                        default=env("SAGARAY_MAX_IN_FLIGHT", "20000"), metavar="N",
                        help="executions in flight in total before starts get 429 "
                             "(default 20000)")
    parser.add_argument("--max-in-flight-per-host", type=_positive,
                        default=env("SAGARAY_MAX_IN_FLIGHT_PER_HOST", "10000"), metavar="N",
                        help="executions in flight per SagaHost before starts get 429 "
                             "(default 10000)")
    parser.add_argument("--no-host-link", dest="host_link", action="store_false",
                        default=not _env_flag("SAGARAY_NO_HOST_LINK"),
                        help="hand executions over and follow their ends by Ray actor "
                             "calls only, not over each host's direct TCP link (for "
                             "networks where API processes cannot reach hosts' ports)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} is not at least 1")
    return value


_positive.__name__ = "positive integer"  # argparse names the type in its usage error


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The options of ``sagaray serve``; :class:`TokenConfigError` for unusable tokens."""
    from coordinator.auth import load_tokens
    from coordinator.server import ServeOptions

    return ServeOptions(
        host=args.host, port=args.port, sagas_dir=Path(args.sagas),
        services_file=Path(args.services), journal_url=args.journal,
        ray_address=args.ray_address, hosts=args.hosts, min_hosts=args.min_hosts,
        max_hosts=args.max_hosts, target_per_host=args.target_per_host,
        scale_down_after=args.scale_down_after, host_cpus=args.host_cpus,
        namespace=args.namespace,
        jaeger_url=args.jaeger_url, lease_seconds=args.lease_seconds,
        api_tokens=load_tokens(args.api_tokens), insecure=args.insecure,
        max_in_flight=args.max_in_flight, max_in_flight_per_host=args.max_in_flight_per_host,
        host_link=args.host_link)


def _run_serve(args: argparse.Namespace) -> int:
    from coordinator.auth import InsecureBind, TokenConfigError, check_exposure
    from coordinator.server import PoolConfigError, check_pool_options, init_ray, serve

    try:
        options = serve_options(args)
        check_exposure(options.host, options.api_tokens, options.insecure)
        check_pool_options(options)
    except (TokenConfigError, InsecureBind, PoolConfigError) as error:
        print(f"sagaray serve: {error}", file=sys.stderr)
        return EXIT_USAGE
    init_ray(options.ray_address, options.namespace)
    from coordinator import eventloop

    eventloop.run(serve(options))
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
