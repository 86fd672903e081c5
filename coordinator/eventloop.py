"""The event loop a coordinator process runs on: uvloop, as Ray's async actors do.

Ray builds each async actor's loop with uvloop when it is installed (a dependency
here) unless ``RAY_USE_UVLOOP=0``; the API process follows the same switch, so one
setting decides for every process of a coordinator.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_wanted() -> bool:
    # Ray's own reading of the switch (ray._common.utils.env_bool): when set, only
    # "1" or "true" mean on, so the API and the actors never disagree.
    value = os.environ.get("RAY_USE_UVLOOP")
    return value is None or value.lower() in ("1", "true")


def new_event_loop() -> asyncio.AbstractEventLoop:
    if uvloop_wanted():
        try:
            import uvloop
        except ImportError:  # an install without it: asyncio's own loop works the same
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
