"""Rendezvous (highest-random-weight) hashing: a stable host for each execution id.

Adding or losing one host moves only the executions that hashed to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def rendezvous(key: str, hosts: Sequence[str]) -> int:
    """Index of the host with the highest hash weight for ``key``."""
    def weight(host: str) -> int:
        digest = hashlib.blake2b(f"{host}|{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return max(range(len(hosts)), key=lambda index: weight(hosts[index]))
