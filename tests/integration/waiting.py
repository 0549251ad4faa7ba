"""Waiting for a condition with a deadline, never for a fixed time (STYLE.md habit 9).

The poll interval only bounds how late a condition that came true is seen; the deadline only bounds how long
a broken build takes to fail, so it is generous: a slow machine makes a passing test slower, never red."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.05


def _describe(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def wait_until(check: Callable[[], T], timeout: float, what: str | Callable[[], str]) -> T:
    """``check()``'s first truthy result, asked every POLL_SECONDS; AssertionError naming ``what`` (a text, or
    a function giving one at that moment, e.g. with a log) when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {_describe(what)}")
        time.sleep(POLL_SECONDS)


async def async_wait_until(check: Callable[[], T | Awaitable[T]], timeout: float, what: str | Callable[[], str]) -> T:
    """``wait_until`` inside an event loop: the loop keeps running between polls; ``check`` may be a
    coroutine function (e.g. one that scrapes in a thread, off the loop)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {_describe(what)}")
        await asyncio.sleep(POLL_SECONDS)
