"""start_instances: shared store, per-instance faults, stop and restart on the same port."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from coordinator.loader import load_services
from services.runner import add_fault, render_services_yaml, start_instances


async def test_instances_share_records_but_not_faults_and_restart_on_their_port() -> None:
    running = await start_instances("flights", 2, environ={})
    try:
        async with aiohttp.ClientSession() as http:
            first, second = running.urls
            async with http.post(f"{first}/bookings", json={"trip": "t", "passenger": "p"}) as r:
                booking = (await r.json())["booking_id"]
            async with http.post(f"{second}/bookings/{booking}/confirm") as r:
                assert r.status == 200  # the other instance knows the booking
            await add_fault(http, second, {"path": "/**", "fault": "error"})
            async with http.get(f"{second}/_health") as r:
                assert r.status == 503
            async with http.get(f"{first}/_health") as r:
                assert r.status == 200 and (await r.json())["requests"] == 1
            await running.stop(1)
            try:
                async with http.get(f"{second}/_health"):
                    raise AssertionError("a stopped instance answered")
            except aiohttp.ClientConnectorError:
                pass
            await running.restart(1)
            assert running.urls[1] == second
            async with http.get(f"{second}/_health") as r:
                assert r.status == 200  # back, without its fault rules
            async with http.get(f"{second}/_ledger") as r:
                assert len((await r.json())["entries"]) == 2  # the shared ledger survived
    finally:
        await running.close()


def test_a_rendered_multi_instance_services_file_loads(tmp_path: Path) -> None:
    text = render_services_yaml(
        {"inventory": ["http://127.0.0.1:1", "http://127.0.0.1:2"], "orders": "http://o:3"},
        {"inventory": {"outlier": {"consecutive_failures": 2, "ejection": "1s"},
                       "health_path": "/_health", "max_concurrency": 8}})
    path = tmp_path / "services.yaml"
    path.write_text(text)
    services = load_services(path)
    inventory = services["inventory"]
    assert inventory.urls == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert inventory.outlier is not None and inventory.outlier.consecutive_failures == 2
    assert (inventory.health_path, inventory.max_concurrency) == ("/_health", 8)
    assert services["orders"].urls == ("http://o:3",)
