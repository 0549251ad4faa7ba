"""Build the fuzzing seed corpus from the RFC 4475 torture messages, plus a few stream-framing seeds.

    .venv/bin/python fuzz/seed_corpus.py fuzz/corpus [tests/data/rfc4475]

Seeds are copied byte for byte (libFuzzer names the inputs it adds by their SHA-1, so the two never clash).
Running it again refreshes the seeds and leaves what the fuzzer found in place.
"""

from __future__ import annotations

import sys
from pathlib import Path

RFC4475 = Path(__file__).resolve().parents[1] / "tests" / "data" / "rfc4475"


def framing_seeds(torture: dict[str, bytes]) -> dict[str, bytes]:
    """What only a stream has: keep-alives around a message (RFC 5626 §4.4.1), two messages in one read."""
    first, second = torture.get("wsinv.dat", b""), torture.get("esc01.dat", b"")
    return {
        "stream-ping-then-message": b"\r\n\r\n" + second,
        "stream-pong-then-message": b"\r\n" + second,
        "stream-two-messages": first + second,
        "stream-message-then-half": second + first[: len(first) // 2],
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2:
        print("usage: seed_corpus.py OUT_DIR [RFC4475_DIR]", file=sys.stderr)
        return 2
    out, source = Path(args[0]), Path(args[1]) if len(args) == 2 else RFC4475
    torture = {path.name: path.read_bytes() for path in sorted(source.glob("*.dat"))}
    if not torture:
        print(
            f"seed_corpus.py: no *.dat files in {source} (the RFC 4475 corpus of tests/data/rfc4475)", file=sys.stderr
        )
        return 1
    out.mkdir(parents=True, exist_ok=True)
    seeds = {**torture, **framing_seeds(torture)}
    for name, data in seeds.items():
        (out / name).write_bytes(data)
    print(f"seed_corpus.py: {len(seeds)} seeds from {source} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
