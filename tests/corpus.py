"""Where the RFC 4475 torture messages are: ``tests/data/rfc4475`` in the repository, or ``$SIPFED_CORPUS``.
A missing corpus fails the tests that need it; it is never skipped."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IN_REPO = ROOT / "tests" / "data" / "rfc4475"
CORPUS = Path(os.environ.get("SIPFED_CORPUS", IN_REPO))


def corpus_files() -> list[Path]:
    files = sorted(CORPUS.glob("*.dat"))
    assert files, f"RFC 4475 corpus not found at {CORPUS}: expected the repository's tests/data/rfc4475"
    return files
