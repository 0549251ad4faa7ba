"""sipfed's build backend: setuptools, with the wheel's packages under one import name of ours.

The checkout keeps its fixed layout (``proxy/``, ``routes/``, ``acl/`` at the top, imported as ``proxy``,
``routes`` and ``acl``) and the development install (``pip install -e``, the Makefile's ``.venv``) uses it
as it is. But ``proxy``, ``routes`` and ``acl`` are also names of other projects on PyPI, so a wheel that
installed them as top-level packages would clash with those in any shared environment. ``build_wheel``
therefore builds from a staged copy in which the three folders are subpackages of ``sipfed``
(``sipfed.proxy``, ``sipfed.routes``, ``sipfed.acl``) and every absolute import between them is rewritten
to match (``from proxy.sip.message import`` -> ``from sipfed.proxy.sip.message import``): the same
mechanical rewrite pip applies to the projects it vendors. The code uses only ``from X import`` forms
between its packages (tests/unit/test_packaging.py holds that), so the rewrite is exact.

Everything else is setuptools' own backend.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("proxy", "routes", "acl")
IMPORT_RE = re.compile(r"^(\s*)from (" + "|".join(PACKAGES) + r")([. ])", re.MULTILINE)
NAMESPACE = "sipfed"

get_requires_for_build_wheel = _setuptools.get_requires_for_build_wheel
get_requires_for_build_sdist = _setuptools.get_requires_for_build_sdist
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable
build_sdist = _setuptools.build_sdist


def rewrite_imports(source: str) -> str:
    """``from proxy.x import y`` -> ``from sipfed.proxy.x import y`` (and the same for routes, acl)."""
    return IMPORT_RE.sub(lambda m: f"{m[1]}from {NAMESPACE}.{m[2]}{m[3]}", source)


def staged_pyproject(text: str) -> str:
    """The wheel's pyproject: ``[tool.setuptools] packages`` under ``sipfed``, the console script into them."""
    section = text.index("[tool.setuptools]")
    match = re.compile(r"^packages = \[(.*?)\]$", re.MULTILINE).search(text, section)
    if match is None:
        raise RuntimeError("pyproject.toml: [tool.setuptools] packages = [...] not found on one line")
    names = [name.strip().strip('"') for name in match.group(1).split(",") if name.strip()]
    staged = ", ".join(f'"{NAMESPACE}.{name}"' for name in names)
    text = text[: match.start()] + f'packages = ["{NAMESPACE}", {staged}]' + text[match.end() :]
    return text.replace('sipfed = "proxy.cli:main"', f'sipfed = "{NAMESPACE}.proxy.cli:main"')


def stage(into: Path) -> None:
    """Lay out the wheel's source tree in ``into``."""
    for name in ("README.md",):
        shutil.copy2(ROOT / name, into / name)
    (into / "pyproject.toml").write_text(staged_pyproject((ROOT / "pyproject.toml").read_text()))
    package = into / NAMESPACE
    package.mkdir()
    (package / "__init__.py").write_text('"""sipfed: a SIP federation edge (proxy, routes, acl)."""\n')
    (package / "__main__.py").write_text(
        '"""``python -m sipfed``: the sipfed command."""\n\nimport sys\n\n'
        f"from {NAMESPACE}.proxy.cli import main\n\nsys.exit(main())\n"
    )
    for name in PACKAGES:
        for path in sorted((ROOT / name).rglob("*.py")):
            target = package / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rewrite_imports(path.read_text()))


def build_wheel(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    with tempfile.TemporaryDirectory(prefix="sipfed-wheel-") as tmp:
        staging = Path(tmp)
        stage(staging)
        here = os.getcwd()
        os.chdir(staging)
        try:
            return str(_setuptools.build_wheel(os.path.abspath(os.path.join(here, wheel_directory)), config_settings))
        finally:
            os.chdir(here)
