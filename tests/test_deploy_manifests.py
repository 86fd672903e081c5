"""The deployment manifests under ``deploy/`` against the code.

No container engine runs here, so nothing is built; instead every manifest is parsed and
cross-checked: ``sagaray`` command lines parse with the real CLI parser, ``ray`` command
lines use options the installed Ray has, environment variables are ones that Sagaray, Ray
or the services file read, ports agree between processes and the services pointing at them,
probes hit real routes, and images and versions agree across files and with the package.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from ray.scripts.scripts import cli as ray_cli

import coordinator
from coordinator.api import create_app
from coordinator.cli import build_parser
from services.registry import DEFAULT_PORTS
from services.registry import create_app as create_service_app
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
RAY_PIN = next(dep.split("==")[1] for dep in PYPROJECT["project"]["dependencies"]
               if dep.startswith("ray[") or dep.startswith("ray=="))
IMAGE = f"sagaray:{VERSION}"
SAGARAY_IMAGE = re.compile(r"^sagaray(:|$)")
# Read by Ray (token authentication) or by Python and pip in the image, not by Sagaray.
FOREIGN_VARIABLES = {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                     "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}
CODE_VARIABLE = re.compile(r"\b(?:SAGARAY|OTEL)_[A-Z_]*[A-Z]\b")
API_ROUTES = {route.resource.canonical for route in create_app(None).router.routes()  # type: ignore[arg-type]
              if route.resource is not None}


def manifests() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def load(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    (document,) = load(DEPLOY / "docker-compose.yml")
    return dict(document)


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load(path)]


@dataclass(frozen=True)
class Container:
    """A process a manifest runs: where, its image, its command line and environment."""

    where: str
    image: str
    argv: tuple[str, ...]
    env: dict[str, str]
    env_names: frozenset[str]

    @property
    def ours(self) -> bool:
        return bool(SAGARAY_IMAGE.match(self.image))


def compose_containers() -> list[Container]:
    found = []
    for name, service in compose()["services"].items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        argv = service.get("command") or []
        found.append(Container(f"compose {name}", service["image"], tuple(argv), env,
                               frozenset(env)))
    return found


def pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in k8s_objects():
        name = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield name, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "RayCluster":
            yield f"{name} head", obj["spec"]["headGroupSpec"]["template"]["spec"]
            for group in obj["spec"]["workerGroupSpecs"]:
                yield f"{name} {group['groupName']}", group["template"]["spec"]


def k8s_containers() -> list[Container]:
    found = []
    for where, spec in pod_templates():
        for container in spec["containers"]:
            env = {item["name"]: str(item.get("value", "")) for item in container.get("env", [])}
            argv = (*container.get("command", []), *container.get("args", []))
            found.append(Container(f"{where}/{container['name']}", container["image"],
                                   argv, env, frozenset(env)))
    return found


def all_containers() -> list[Container]:
    return [*compose_containers(), *k8s_containers()]


def command_lines(argv: tuple[str, ...] | list[str]) -> list[list[str]]:
    """The simple commands of an argv: ``sh -c "a && exec b"`` is two of them."""
    if len(argv) >= 3 and argv[0] in ("sh", "bash") and argv[1] == "-c":
        script = " ".join(argv[2:])
        return [[word for word in shlex.split(part) if word != "exec"]
                for part in re.split(r"&&|;", script) if part.strip()]
    return [list(argv)] if argv else []


def documented_command_lines(path: Path) -> list[list[str]]:
    """``sagaray ...`` and ``ray ...`` in the examples: fenced code in Markdown, indented
    comments (``#   ray up ...``) elsewhere; ``ray job submit ... -- CMD`` is two commands."""
    text = path.read_text()
    if path.suffix == ".md":
        snippets = "\n".join(re.findall(r"```(?:sh)?\n(.*?)```", text, re.DOTALL))
    else:
        snippets = "\n".join(line[1:] for line in text.splitlines()
                             if re.match(r"\s*#   ", line))
    joined = re.sub(r"\\\n\s*", " ", snippets)
    found = []
    for line in joined.splitlines():
        line = re.sub(r"^(?:\w+=\S+\s+)+", "", line.strip())  # VAR=value prefixes
        for part in line.split(" -- "):
            part = part.split("  #")[0].strip()
            if re.match(r"(sagaray|ray) [a-z]", part):
                found.append(shlex.split(part))
    return found


def every_command_line() -> list[tuple[str, list[str]]]:
    found = [(c.where, line) for c in all_containers() for line in command_lines(c.argv)]
    ray_up = load(DEPLOY / "ray-cluster.yaml")[0]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        found += [(f"ray-cluster.yaml {key}", shlex.split(line)) for line in ray_up[key]]
    for path in (DEPLOY / "ray-cluster.yaml", DEPLOY / "README.md",
                 DEPLOY / "docker-compose.yml", DEPLOY / "Dockerfile"):
        found += [(path.name, line) for line in documented_command_lines(path)]
    for name, service in compose()["services"].items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[:1] == ["CMD"]:
            found.append((f"compose {name} healthcheck", test[1:]))
    cmd = re.search(r"^CMD (\[.*\])", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert cmd is not None
    # The entry point runs `sagaray` with CMD's arguments (test_the_entrypoint_...).
    found.append(("Dockerfile CMD", ["sagaray", *yaml.safe_load(cmd[1])]))
    return found


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path: Path) -> None:
    documents = load(path)
    assert documents, f"{path} is empty"
    for document in documents:
        assert isinstance(document, dict), path


def test_the_kustomization_lists_every_manifest_and_only_existing_files() -> None:
    (kustomization,) = load(K8S / "kustomization.yaml")
    resources = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == on_disk
    for generator in kustomization["configMapGenerator"]:
        for item in generator["files"]:
            assert (K8S / item.split("=", 1)[-1]).resolve().is_file(), item
    for generator in kustomization["secretGenerator"]:
        for item in [*generator.get("envs", []), *generator.get("files", [])]:
            assert (K8S / f"{item}.example").is_file(), f"{item}.example documents {item}"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for secret in ("deploy/kubernetes/secrets.env", "deploy/kubernetes/api-tokens",
                   "deploy/api-tokens", "deploy/ray-auth-token"):
        assert secret in ignored, f"{secret} must never be committed"


# -- commands and flags ----------------------------------------------------------------


def test_sagaray_command_lines_parse_with_the_cli() -> None:
    parser = build_parser()
    checked = set()
    for where, argv in every_command_line():
        if argv[0] != "sagaray":
            continue
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{where}: {shlex.join(argv)} does not parse with sagaray's CLI")
        checked.add(args.command)
        if args.command == "serve":
            assert not args.insecure and "--insecure" not in argv, where
    assert checked >= {"serve", "services"}


def test_ray_command_lines_use_options_ray_has() -> None:
    checked = set()
    for where, argv in every_command_line():
        if argv[0] != "ray":
            continue
        command: Any = ray_cli
        words = argv[1:]
        while hasattr(command, "commands") and words and words[0] in command.commands:
            command = command.commands[words.pop(0)]
        assert not hasattr(command, "commands"), f"{where}: unknown ray command {argv}"
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for word in words:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in options, f"{where}: ray {command.name} {word}"
        checked.add(command.name)
    assert checked >= {"start", "status", "submit"}


# -- environment -----------------------------------------------------------------------


def code_variables() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "coordinator").rglob("*.py"):
        names |= set(CODE_VARIABLE.findall(path.read_text()))
    return names


def services_file_variables() -> set[str]:
    return set(re.findall(r"\$\{env:([A-Z_][A-Z0-9_]*)\}", (DEPLOY / "services.yaml").read_text()))


def test_our_containers_set_only_variables_something_reads() -> None:
    known = code_variables() | FOREIGN_VARIABLES | services_file_variables()
    dockerfile_env = set(re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=",
                                    (DEPLOY / "Dockerfile").read_text(), re.MULTILINE))
    assert dockerfile_env, "the Dockerfile's ENV was not found"
    for container in [c for c in all_containers() if c.ours]:
        unknown = container.env_names - known
        assert not unknown, f"{container.where} sets {sorted(unknown)}, which nothing reads"
    assert dockerfile_env <= known, dockerfile_env - known


def test_every_ray_process_uses_token_auth_with_one_token() -> None:
    for container in all_containers():
        if not any(line[:1] == ["ray"] for line in command_lines(container.argv)) and \
                "RayCluster" not in container.where:
            continue
        assert container.env.get("RAY_AUTH_MODE") == "token", container.where
        assert "RAY_AUTH_TOKEN" in container.env_names, container.where
    tokens = {c.env["RAY_AUTH_TOKEN"] for c in compose_containers()
              if "RAY_AUTH_TOKEN" in c.env}
    assert len(tokens) == 1 and tokens.pop().startswith("${RAY_AUTH_TOKEN:?")
    docker = load(DEPLOY / "ray-cluster.yaml")[0]["docker"]["run_options"]
    assert "-e RAY_AUTH_MODE=token" in docker
    assert any(o.startswith("-e RAY_AUTH_TOKEN_PATH=") for o in docker)


def test_ray_cluster_yaml_passes_the_launchers_own_checks() -> None:
    """Ray's schema and the local provider's checks, as ``ray up`` runs them first."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(DEPLOY / "ray-cluster.yaml")[0]
    validate_config(prepare_config(config))
    # The launcher starts every container with --net=host (ray/autoscaler/_private/
    # docker.py): a published port would be discarded, and the API is the host's port.
    options = [shlex.split(o)[0] for o in config["docker"]["run_options"]]
    assert not {"-p", "--publish", "--net", "--network"} & set(options), options
    # Inside the containers the launcher runs rsync (bootstrap files) and the head's
    # autoscaler runs ssh (to the workers): the image must carry both.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"apt-get install [^\n]*\brsync\b[^\n]*\bopenssh-client\b", dockerfile)


def test_every_served_api_has_tokens() -> None:
    for container in all_containers():
        for line in command_lines(container.argv):
            if line[:2] != ["sagaray", "serve"]:
                continue
            tokens = "--api-tokens" in line or container.env_names & {
                "SAGARAY_API_TOKENS_FILE", "SAGARAY_API_READ_TOKEN", "SAGARAY_API_WRITE_TOKEN"}
            assert tokens, f"{container.where} serves without API tokens"
    assert "SAGARAY_RAY_ADDRESS" not in {n for c in all_containers() for n in c.env_names}


# -- ports and probes ------------------------------------------------------------------


def flag(argv: list[str], name: str) -> str:
    for i, word in enumerate(argv):
        if word == name:
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def serve_line(container: Container) -> list[str]:
    return next(line for line in command_lines(container.argv) if line[:2] == ["sagaray", "serve"])


def test_compose_ports_and_addresses_agree() -> None:
    services = compose()["services"]
    head = command_lines(services["ray-head"]["command"])[0]
    gcs = flag(head, "--port")
    for name, service in services.items():
        for line in command_lines(service.get("command") or []):
            if line[:2] == ["ray", "start"] and "--head" not in line:
                assert flag(line, "--address") == f"ray-head:{gcs}", name
    assert "--address=ray-head:" + gcs in services["ray-head"]["healthcheck"]["test"]
    api = services["coordinator"]
    port = flag(serve_line(next(c for c in compose_containers()
                                if c.where == "compose coordinator")), "--port")
    assert f"{port}:{port}" in api["ports"]
    probe = urlsplit(re.findall(r"http://[^'\"]+", " ".join(api["healthcheck"]["test"]))[0])
    assert probe.port == int(port) and probe.path in API_ROUTES
    journal = urlsplit(api["environment"]["SAGARAY_JOURNAL"])
    assert journal.hostname == "postgres" and journal.port == 5432
    assert "5432" in services["postgres"]["healthcheck"]["test"]
    otlp = urlsplit(api["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert otlp.hostname == "jaeger" and f"{otlp.port}:{otlp.port}" in services["jaeger"]["ports"]
    demo = urlsplit(re.findall(r"http://[^'\"]+", " ".join(
        services["services"]["healthcheck"]["test"]))[0])
    assert demo.port in DEFAULT_PORTS.values() and demo.path in service_routes()


def test_compose_starts_the_api_after_its_dependencies_are_healthy() -> None:
    services = compose()["services"]
    needs = services["coordinator"]["depends_on"]
    for dependency in ("postgres", "ray-head", "services"):
        assert needs[dependency]["condition"] == "service_healthy", dependency
        assert "healthcheck" in services[dependency], dependency
    for worker in ("ray-worker-1", "ray-worker-2"):
        assert services[worker]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "healthcheck" in services["coordinator"]


def test_the_services_file_points_at_the_demo_services() -> None:
    (document,) = load(DEPLOY / "services.yaml")
    k8s_services = {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "Service"}
    for name, service in document["services"].items():
        url = urlsplit(service["url"])
        assert url.port == DEFAULT_PORTS[name], name
        assert url.hostname in compose()["services"], f"compose has no service {url.hostname}"
        ports = {p["port"] for p in k8s_services[str(url.hostname)]["spec"]["ports"]}
        assert url.port in ports, f"the Kubernetes Service {url.hostname} lacks {url.port}"
    assert set(document["services"]) == set(DEFAULT_PORTS)


def service_routes() -> set[str]:
    app = create_service_app("flights")
    return {route.resource.canonical for route in app.router.routes()
            if route.resource is not None}


def test_k8s_services_target_container_ports_and_probes_hit_routes() -> None:
    objects = k8s_objects()
    workloads = {o["metadata"]["name"]: o for o in objects
                 if o["kind"] in ("Deployment", "StatefulSet")}
    for service in [o for o in objects if o["kind"] == "Service"]:
        selector = service["spec"]["selector"]
        (workload,) = [w for w in workloads.values()
                       if w["spec"]["template"]["metadata"]["labels"].items() >= selector.items()]
        ports = {p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)
    api = next(c for c in k8s_containers() if c.where.startswith("Deployment sagaray-api"))
    port = int(flag(serve_line(api), "--port"))
    spec = workloads["sagaray-api"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"]["port"] == port and spec[probe]["httpGet"]["path"] in (
            API_ROUTES & {"/healthz", "/readyz"}), probe
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    demo = workloads["sagaray-demo-services"]["spec"]["template"]["spec"]["containers"][0]
    assert demo["readinessProbe"]["httpGet"]["path"] in service_routes()


def test_k8s_api_joins_the_ray_head_service_and_mounts_what_it_reads() -> None:
    (cluster,) = [o for o in k8s_objects() if o["kind"] == "RayCluster"]
    api = next(c for c in k8s_containers() if c.where.startswith("Deployment sagaray-api"))
    ray_start = next(line for line in command_lines(api.argv) if line[:2] == ["ray", "start"])
    head_ports = {p["containerPort"] for p in
                  cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    host, port = flag(ray_start, "--address").split(":")
    assert host == f"{cluster['metadata']['name']}-head-svc" and int(port) in head_ports
    serve = serve_line(api)
    assert flag(serve, "--ray-address") == "auto"
    spec = next(o for o in k8s_objects() if o["metadata"]["name"] == "sagaray-api"
                and o["kind"] == "Deployment")["spec"]["template"]["spec"]
    mounts = [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]]
    for path in (flag(serve, "--services"), flag(serve, "--api-tokens")):
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), path
    (kustomization,) = load(K8S / "kustomization.yaml")
    secrets = {g["name"]: g for g in kustomization["secretGenerator"]}
    token_volume = next(v for v in spec["volumes"] if v["name"] == "api-tokens")
    assert flag(serve, "--api-tokens").rsplit("/", 1)[1] in secrets[
        token_volume["secret"]["secretName"]]["files"]
    env_keys = set((K8S / "secrets.env.example").read_text().split("\n"))
    keys = {line.split("=")[0] for line in env_keys if "=" in line and not line.startswith("#")}
    for obj_spec in [s for _, s in pod_templates()]:
        for container in obj_spec["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "sagaray-secrets" and ref["key"] in keys, item


# -- images and versions ---------------------------------------------------------------


def test_images_and_versions_agree_everywhere() -> None:
    assert coordinator.__version__ == VERSION
    images: dict[str, set[str]] = {}
    for container in all_containers():
        repository, _, tag = container.image.rpartition(":")
        assert tag and tag != "latest", f"{container.where}: pin {container.image}"
        images.setdefault(repository, set()).add(tag)
    for repository, tags in images.items():
        assert len(tags) == 1, f"{repository} has several tags: {tags}"
    assert images["sagaray"] == {VERSION}
    assert load(DEPLOY / "ray-cluster.yaml")[0]["docker"]["image"] == IMAGE
    (kustomization,) = load(K8S / "kustomization.yaml")
    assert kustomization["images"] == [{"name": "sagaray", "newName": "sagaray",
                                        "newTag": VERSION}]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"-t {IMAGE} " in dockerfile
    base = re.search(r"^FROM python:(\d+)\.(\d+)\.\d+-slim-\w+$", dockerfile, re.MULTILINE)
    assert base is not None, "pin the Python base image to a patch release"
    assert f">={base[1]}.{base[2]}" == PYPROJECT["project"]["requires-python"]
    (cluster,) = [o for o in k8s_objects() if o["kind"] == "RayCluster"]
    constraints = (DEPLOY / "constraints.txt").read_text()
    assert cluster["spec"]["rayVersion"] == RAY_PIN
    assert f"\nray=={RAY_PIN}\n" in constraints
    import ray

    assert ray.__version__ == RAY_PIN


def test_constraints_pin_every_runtime_dependency() -> None:
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[name.lower().replace("_", "-")] = version
    for dependency in PYPROJECT["project"]["dependencies"]:
        name = re.split(r"[\[<>=!~ ]", dependency, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in deploy/constraints.txt"


# -- the image's entry point -----------------------------------------------------------


def run_entrypoint(*args: str) -> str:
    """deploy/entrypoint.sh with this venv's programs first on PATH, as in the image."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    done = subprocess.run(["sh", str(DEPLOY / "entrypoint.sh"), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PATH": path})
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_the_entrypoint_runs_sagaray_with_its_arguments() -> None:
    assert coordinator.__version__ in run_entrypoint("--version")
    report = run_entrypoint("validate", str(ROOT / "sagas"))
    assert "trip_booking v1: 5 steps" in report and "order_fulfillment v1" in report, report


def test_the_entrypoint_runs_a_named_program_as_given() -> None:
    assert "ray, version 2.60.0" in run_entrypoint("ray", "--version")
    assert coordinator.__version__ in run_entrypoint("sagaray", "--version")


def test_the_dockerfile_uses_the_entrypoint() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ENTRYPOINT \[\"sagaray-entrypoint\"\]$", dockerfile, re.MULTILINE)
    assert "deploy/entrypoint.sh /usr/local/bin/sagaray-entrypoint" in dockerfile
