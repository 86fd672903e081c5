"""The CLI as a user runs it: real subprocesses against the served API, and the demo."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DemoStack
from tests.runtime.conftest import Api

SAGARAY = str(Path(sys.executable).with_name("sagaray"))


async def sagaray(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        SAGARAY, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def parsed(text: str) -> Any:
    return json.loads(text)


async def test_start_wait_status_list_cancel_resume(stack: DemoStack, api: Api) -> None:
    order = {"order_id": f"ORD-{uuid.uuid4().hex[:8]}"}
    code, out, _ = await sagaray("start", "faulty_order", "--input", json.dumps(order),
                                 "--wait", "20", "--url", stack.url)
    assert code == 0, out
    view = parsed(out)
    assert view["status"] == "completed"
    code, out, _ = await sagaray("status", view["execution_id"], "--url", stack.url)
    assert code == 0 and parsed(out)["execution_id"] == view["execution_id"]
    code, out, _ = await sagaray("list", "--saga", "faulty_order", "--limit", "500",
                                 "--url", stack.url)
    assert view["execution_id"] in {item["execution_id"] for item in parsed(out)["items"]}
    code, out, _ = await sagaray("cancel", view["execution_id"], "--url", stack.url)
    assert code == 1 and parsed(out)["status"] == 409
    code, out, _ = await sagaray("resume", view["execution_id"], "--url", stack.url)
    assert code == 1 and "only a failed execution" in parsed(out)["detail"]


async def test_start_rejects_bad_input_with_the_field_named(stack: DemoStack) -> None:
    code, out, _ = await sagaray("start", "trip_booking", "--input", '{"trip_id": 7}',
                                 "--url", stack.url)
    assert code == 1
    problem = parsed(out)
    assert problem["status"] == 422
    assert {e["path"] for e in problem["errors"]} >= {"$.trip_id", "$"}
    code, _, err = await sagaray("start", "trip_booking", "--input", "{nope",
                                 "--url", stack.url)
    assert code == 2 and "--input is not JSON" in err


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.get("/healthz"))[0] == 200
    status, body = await api.get("/readyz")
    assert status == 200 and body["checks"] == {"journal": "ok", "ray": "ok", "hosts": "ok"}


async def test_demo_runs_every_scenario_to_its_expected_end(
    stack: DemoStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from coordinator import demo

    monkeypatch.setattr(demo, "WORKDIR", tmp_path / "demo")
    code = await demo.run_demo(port=0)
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("\nok   ") == len(demo.SCENARIOS), out
    assert "cancel requested -> HTTP 202" in out
