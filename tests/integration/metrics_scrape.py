"""Reading the live process's /metrics as a scraper does (Prometheus text format), and waiting on a series:
a counter that counts what a test did (a message dropped, a reload applied) is the observable condition
to wait for, rather than a fixed sleep."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from tests.integration.conftest import free_port
from tests.integration.processes import stop_process
from tests.integration.waiting import async_wait_until, wait_until

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


class Prometheus:
    """Debian's prometheus server scraping one target every second, on loopback; evaluating ``rules`` each second."""

    def __init__(self, workdir: Path, target: str, rules: Path | None = None) -> None:
        if shutil.which("prometheus") is None:
            raise RuntimeError("prometheus is not installed: apt-get install prometheus")
        self.port = free_port()
        cfg = workdir / "prometheus.yml"
        rule_files = f'rule_files: ["{rules}"]\n' if rules is not None else ""
        cfg.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
{rule_files}scrape_configs:
  - job_name: sipfed
    static_configs:
      - targets: ["{target}"]
""")
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def query(self, expr: str) -> float | None:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=3) as reply:
                data = json.load(reply)
        except OSError:
            return None
        result = data.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, expected: float, timeout: float = 40) -> float | None:
        """``expr``'s value once it equals ``expected``; else, after ``timeout``, the last value seen."""
        seen: list[float | None] = [None]

        def reached() -> bool:
            seen[0] = self.query(expr)
            return seen[0] == expected

        with contextlib.suppress(AssertionError):
            wait_until(reached, timeout, f"Prometheus: {expr} == {expected}")
        return seen[0]

    def stop(self) -> None:
        stop_process(self.proc)
