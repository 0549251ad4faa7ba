"""Reading the live process's /metrics as a scraper does (Prometheus text format), and waiting on a series:
a counter that counts what a test did (a message dropped, a reload applied) is the observable condition
to wait for, rather than a fixed sleep."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import TYPE_CHECKING

from tests.integration.waiting import async_wait_until

if TYPE_CHECKING:
    from tests.integration.conftest import Sipfed

METRIC_SECONDS = 10.0


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format, summed over the labels not named (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def reading(sipfed: Sipfed, name: str, **labels: str) -> float:
    """One series of sipfed's /metrics now."""
    return sample(scrape(sipfed.ports["metrics"]), name, **labels)


async def _reading_off_the_loop(sipfed: Sipfed, name: str, labels: dict[str, str]) -> float:
    return sample(await asyncio.to_thread(scrape, sipfed.ports["metrics"]), name, **labels)


async def metric_reaches(
    sipfed: Sipfed, name: str, value: float, *, timeout: float = METRIC_SECONDS, **labels: str
) -> float:
    """Wait until a counter is at least ``value`` (scraped off the event loop); its reading then."""
    seen: list[float] = []

    async def reached() -> bool:
        seen.append(await _reading_off_the_loop(sipfed, name, labels))
        return seen[-1] >= value

    await async_wait_until(
        reached,
        timeout,
        lambda: f"{name}{labels} stayed at {seen[-1] if seen else None}, expected {value}; log:\n{sipfed.log_text()}",
    )
    return seen[-1]


async def metric_equals(
    sipfed: Sipfed, name: str, value: float, *, timeout: float = METRIC_SECONDS, **labels: str
) -> None:
    """Wait until a series (a gauge: it goes down too) reads exactly ``value``."""
    seen: list[float] = []

    async def equal() -> bool:
        seen.append(await _reading_off_the_loop(sipfed, name, labels))
        return seen[-1] == value

    await async_wait_until(
        equal,
        timeout,
        lambda: f"{name}{labels} is {seen[-1] if seen else None}, expected {value}; log:\n{sipfed.log_text()}",
    )
