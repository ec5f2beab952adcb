"""Progress lines for long up-front passes over data (validation, decoding): at most one every few seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

Item = TypeVar("Item")


def logged(items: Sequence[Item], noun: str, log: logging.Logger, every_s: float = 5.0) -> Iterator[Item]:
    """Yields `items`, logging "  i/n <noun> (x <noun>/s)" at most every `every_s` seconds."""
    start = last_report = time.perf_counter()
    for index, item in enumerate(items):
        now = time.perf_counter()
        if now - last_report > every_s:
            last_report = now
            log.info("  %d/%d %s (%.1f %s/s)", index, len(items), noun, index / (now - start), noun)
        yield item
