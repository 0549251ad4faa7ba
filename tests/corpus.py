"""Where the RFC 4475 torture messages are: ``../shared/corpus/rfc4475`` beside the checkout (as CI lays
it out), or ``$SIPFED_CORPUS``. A missing corpus fails the tests that need it; it is never skipped."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("SIPFED_CORPUS", ROOT.parent / "shared" / "corpus" / "rfc4475"))


def corpus_files() -> list[Path]:
    files = sorted(CORPUS.glob("*.dat"))
    assert files, f"RFC 4475 corpus not found at {CORPUS}: expected ../shared/corpus/rfc4475 beside the checkout"
    return files
