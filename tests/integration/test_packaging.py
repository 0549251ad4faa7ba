"""The wheel installs beside anything (issue 17): its packages live under the one import name ``sipfed``, so a
fresh virtual environment that also holds PyPI's ``routes`` (a namesake of our ``routes/`` folder) runs
``sipfed --version`` and ``sipfed check-config`` from the wheel, and ``import routes`` there is still
PyPI's. Built with ``pip wheel`` through tools/build_backend.py, as ``pipx install .`` would."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Sipfed, lab_config

pytestmark = pytest.mark.integration

sys.path.insert(0, str(ROOT / "tools"))
from build_backend import PACKAGES, rewrite_imports, staged_pyproject  # noqa: E402


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_the_rewrite_covers_every_import_between_our_packages() -> None:
    """Only ``from X import`` forms are used between proxy/routes/acl, so the rewrite leaves none behind."""
    plain = re.compile(r"^\s*import (" + "|".join(PACKAGES) + r")\b", re.MULTILINE)
    for name in PACKAGES:
        for path in (ROOT / name).rglob("*.py"):
            source = path.read_text()
            assert not plain.search(source), f"{path}: use 'from {name} import ...' (tools/build_backend.py)"
            rewritten = rewrite_imports(source)
            assert not re.search(r"^\s*from (" + "|".join(PACKAGES) + r")[. ]", rewritten, re.MULTILINE), path
    assert rewrite_imports("from proxy.sip.message import Request\n    from acl import x\n") == (
        "from sipfed.proxy.sip.message import Request\n    from sipfed.acl import x\n"
    )
    staged = staged_pyproject((ROOT / "pyproject.toml").read_text())
    assert 'sipfed = "sipfed.proxy.cli:main"' in staged
    assert 'packages = ["sipfed", "sipfed.proxy",' in staged


def test_the_wheel_installs_beside_pypis_routes(tmp_path: Path, certs: Path) -> None:
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT)
    [wheel] = list(wheels.glob("sipfed-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"sipfed"}, tops

    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python, sipfed = env / "bin" / "python", env / "bin" / "sipfed"
    run(python, "-m", "pip", "install", "-q", "routes", wheel)  # PyPI's Routes first, then ours beside it
    assert run(sipfed, "--version").startswith("sipfed ")
    config = lab_config(tmp_path / "lab.toml", certs, cups_port=5062, lync_port=5061)
    out = run(sipfed, "check-config", "--config", config, cwd=tmp_path)
    assert f"{config}: OK" in out, out
    # From tmp_path: `python -c` puts its working directory first on sys.path, and the checkout holds a routes/.
    theirs = run(
        python,
        "-c",
        "import routes, sipfed.routes; print(routes.__file__); print(sipfed.routes.__file__)",
        cwd=tmp_path,
    )
    pypi, ours = (Path(line) for line in theirs.split())
    site = next((env / "lib").glob("python3*/site-packages"))
    assert pypi.parent.parent == site, pypi  # PyPI's routes, from the venv, untouched
    assert ours == site / "sipfed" / "routes" / "__init__.py", ours
    assert run(python, "-m", "sipfed", "--version", cwd=tmp_path).startswith("sipfed ")
    # Worker mode from the wheel: the supervisor starts its workers as `python -m sipfed.proxy` (not `proxy`).
    workers = tmp_path / "workers.toml"
    workers.write_text(config.read_text().replace("[proxy]\n", "[proxy]\nworkers = 2\n", 1))
    served = Sipfed(workers, timeout=60, program=sipfed, cwd=tmp_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{served.ports['metrics']}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert 'sipfed_worker_up{worker="0"} 1.0' in text
        assert 'sipfed_worker_up{worker="1"} 1.0' in text
    finally:
        assert served.stop() == 0, served.log_text()
