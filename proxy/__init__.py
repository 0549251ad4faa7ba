import importlib.util

__version__ = "0.1.0"


def build_kind() -> str:
    """``mypyc`` when the SIP core was compiled (tools/mypyc_build.py, ``make fast``), else ``python``: where
    the core's probe module would be imported from, without importing it."""
    spec = importlib.util.find_spec(f"{__name__}.sip.message")  # ``sipfed.proxy`` from the wheel
    origin = spec.origin if spec is not None else None
    return "python" if origin is None or origin.endswith(".py") else "mypyc"
