"""``make fast``: sipfed's hot path compiled ahead of time with mypyc, beside the pure-Python checkout.

python tools/mypyc_build.py [--out build/mypyc] [--force]

The checkout's ``proxy/``, ``routes/`` and ``acl/`` are copied to ``--out`` and the modules in ``COMPILED``
are compiled there, in place (a C extension next to each source; CPython imports the extension first). The
checkout itself is never touched, so the tests, ``pip install -e`` and a machine without a C compiler keep
the pure-Python package. Run the compiled one by putting ``--out`` first on the path:
``PYTHONPATH=build/mypyc python -P -m proxy run …`` (``-P``: the current folder's pure ``proxy`` must not
come first); ``make run`` and ``make bench`` do that when this build succeeds.

Which modules: the sans-IO SIP core (parse, transactions, relay decisions), the routing and trust tables,
and the stream driver between sockets and core, where a live profile of the TLS relay spends its time
(README, Performance). Not compiled: ``proxy/relay/observe.py``, whose ``Observer`` is subclassed by
interpreted classes (``Metrics``, the tests' observers; mypyc's native classes cannot have interpreted
subclasses), and everything off the hot path (config, CLI, doctor, XMPP, admin), where it would buy start-up
time only. mypyc compiles from the same ``mypy --strict`` types ``make lint`` checks.

A build is skipped when its stamp (a hash of every copied source and of mypy's version) is current.
Exit status: 0 built or current; 1 the build failed (the message says why; the pure package still runs).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("proxy", "routes", "acl")
COMPILED = (
    "proxy/sip/*.py",
    "proxy/relay/*.py",
    "routes/table.py",
    "routes/candidates.py",
    "acl/allow.py",
    "acl/digest.py",
    "acl/peers.py",
    "acl/subjects.py",
    "proxy/net/driver.py",
    "proxy/net/connection.py",
    "proxy/net/tls_session.py",
    "proxy/net/gate.py",
)
NOT_COMPILED = ("proxy/relay/observe.py",)
STAMP = ".mypyc-stamp"
#: A module whose extension proves the compiled build is the one imported (proxy.build_kind reads it too).
PROBE = "proxy.sip.message"


def sources(root: Path) -> list[Path]:
    """Every Python source of the three packages under ``root``, sorted."""
    return sorted(p for package in PACKAGES for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


def compiled_modules(root: Path) -> list[str]:
    """The relative paths ``COMPILED`` names under ``root``, minus ``NOT_COMPILED``."""
    found = {str(p.relative_to(root)) for pattern in COMPILED for p in root.glob(pattern)}
    return sorted(found - set(NOT_COMPILED))


def fingerprint() -> str:
    digest = hashlib.sha256(importlib.metadata.version("mypy").encode())
    for path in sources(ROOT):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def copy_tree(out: Path) -> None:
    """``out`` holds the three packages' sources and nothing else (old extensions and build files go)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, out / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))


SETUP = textwrap.dedent(
    """\
    import sys
    from setuptools import setup
    from mypyc.build import mypycify

    setup(
        name="sipfed-mypyc",
        ext_modules=mypycify(sys.argv[3:], opt_level="3"),
        script_args=["build_ext", "--inplace", "--parallel", sys.argv[2]],
    )
    """
)


def build(out: Path) -> None:
    """Compile ``COMPILED`` in ``out`` with mypyc (strict mypy settings, as ``make lint`` uses)."""
    modules = compiled_modules(out)
    (out / "mypyc_setup.py").write_text(SETUP)
    (out / "mypy.ini").write_text("[mypy]\nstrict = True\n")
    env = {**os.environ, "MYPY_CONFIG_FILE_DIR": str(out)}
    jobs = str(os.cpu_count() or 1)
    done = subprocess.run(
        [sys.executable, "mypyc_setup.py", "build", jobs, *modules],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        errors = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()]
        raise RuntimeError(
            "mypyc failed:\n" + "\n".join(errors[-20:] or (done.stdout + done.stderr).splitlines()[-20:])
        )
    check = subprocess.run(
        [sys.executable, "-P", "-c", f"import {PROBE} as m; print(m.__file__)"],
        env={**os.environ, "PYTHONPATH": str(out)},
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode != 0 or not check.stdout.strip().endswith(".so"):
        raise RuntimeError(f"the compiled {PROBE} does not import from {out}:\n{check.stdout}{check.stderr}")
    shutil.rmtree(out / "build", ignore_errors=True)  # mypyc's C sources and objects; the extensions stay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/mypyc_build.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "mypyc", help="where the compiled tree goes")
    parser.add_argument("--force", action="store_true", help="build even if the stamp is current")
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    stamp = fingerprint()
    if not args.force and (out / STAMP).exists() and (out / STAMP).read_text() == stamp:
        print(f"mypyc build: current ({out})")
        return 0
    try:
        import mypyc  # noqa: F401  # comes with mypy (the dev extra)
    except ImportError:
        print("mypyc build: mypyc is not installed (pip install mypy); the pure-Python package runs", file=sys.stderr)
        return 1
    copy_tree(out)
    try:
        build(out)
    except RuntimeError as exc:
        print(f"mypyc build failed in {out}: {exc}\nthe pure-Python package runs", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)  # a half-built tree must not be taken for a build
        return 1
    (out / STAMP).write_text(stamp)
    print(f"mypyc build: {len(compiled_modules(out))} modules compiled in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
