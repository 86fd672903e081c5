"""What of an instance URL may be shown in logs and metrics: its origin, not its path.

The loader refuses credentials, queries and fragments in service URLs, but a path may
still carry a tenant key or a token, so only ``scheme://host:port`` leaves the invoker.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else "<instance>"
