"""``sipfed_gc_pause_seconds``: every pass of the cyclic collector is timed, and a long one is logged."""

import gc
import logging

import pytest
from prometheus_client import CollectorRegistry

from proxy.metrics import Metrics


def test_collector_passes_are_timed_and_long_ones_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    callback = Metrics(registry).watch_gc(warn_seconds=0.0)  # every pass counts as long here
    try:
        with caplog.at_level(logging.WARNING, logger="sipfed"):
            gc.collect(2)
    finally:
        gc.callbacks.remove(callback)
    assert registry.get_sample_value("sipfed_gc_pause_seconds_count", {"generation": "2"}) == 1.0
    assert "garbage collector pass (generation 2) stalled the event loop" in caplog.text
