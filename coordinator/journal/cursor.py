"""The opaque listing cursor every store hands out: base64url of ``repr(created_at)|id``.

Shared so that a cursor means the same thing whichever store produced it.
"""

from __future__ import annotations

import base64
import binascii

from coordinator.journal.base import ExecutionRow


def encode_cursor(row: ExecutionRow) -> str:
    # repr() round-trips floats exactly, which the keyset comparison needs.
    raw = f"{row.created_at!r}|{row.execution_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, sep, execution_id = raw.partition("|")
        if not sep:
            raise ValueError("no separator")
        return float(created_at), execution_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
