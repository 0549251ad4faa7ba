"""Which SIP core the real process runs, as it tells its operator: the start-up log line and the
``core`` label of ``sipfed_build_info``. ``make test`` runs this file twice, on the checkout (pure Python) and
under ``make test-compiled`` (``SIPFED_COMPILED``: the tree tools/mypyc_build.py compiles), so a compiled
run that silently imported the pure package fails here rather than passing for the compiled one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import COMPILED, Sipfed, free_port, lab_config
from tests.integration.metrics_scrape import reading

pytestmark = pytest.mark.integration

EXPECTED = ("mypyc", "compiled (mypyc)") if COMPILED else ("python", "pure Python")


def test_the_process_says_which_core_it_runs(
    tmp_path: Path, certs: Path, start_sipfed: Callable[[Path], Sipfed]
) -> None:
    label, words = EXPECTED
    config = lab_config(tmp_path / "sipfed.toml", certs, cups_port=free_port("127.0.0.2"), lync_port=free_port())
    sipfed = start_sipfed(config)
    sipfed.wait_for_log(f"SIP core: {words}")
    assert reading(sipfed, "sipfed_build_info", core=label) == 1
    other = "python" if label == "mypyc" else "mypyc"
    assert reading(sipfed, "sipfed_build_info", core=other) == 0
