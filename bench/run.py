"""Entry point of ``make bench``: ``python bench/run.py [--quick]`` (see bench/README.md)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script: make the repository root importable so ``bench`` is a package.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(importlib.import_module("bench.cli").main())
