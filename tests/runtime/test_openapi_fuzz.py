"""Schemathesis against the served /openapi.json: no 5xx, no response outside the schema."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.conftest import DemoStack

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
])


async def test_schemathesis_finds_no_server_error_or_schema_break(
    stack: DemoStack, tmp_path: Path
) -> None:
    binary = Path(sys.executable).with_name("schemathesis")
    process = await asyncio.create_subprocess_exec(
        str(binary), "run", f"{stack.url}/openapi.json", "--checks", CHECKS,
        "--max-examples", "25", "--workers", "1", "--request-timeout", "70",
        "--generation-deterministic", "--phases", "examples,coverage,fuzzing",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
        cwd=tmp_path,  # its example cache stays out of the work tree
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    text = output.decode(errors="replace")
    print(text[-3000:])
    assert process.returncode == 0, text[-6000:]
