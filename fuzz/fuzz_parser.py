#!/usr/bin/env python3
"""atheris (libFuzzer) harness for sipfed's SIP parser: whole messages, stream framing, and the header values
the relay parses (Request-URI, Via, From, To, Route).

    .venv/bin/python fuzz/seed_corpus.py fuzz/corpus
    .venv/bin/python fuzz/fuzz_parser.py fuzz/corpus -dict=fuzz/sip.dict -max_len=16384 -max_total_time=60

One rule, as the RFC 4475 torture tests ask of any element: whatever arrives, the parser answers with
proxy.sip.errors.SipError (which carries the 4xx/5xx to send) or with a message. Any other exception is a
crash: libFuzzer stops and writes the input to ``<artifact_prefix>crash-<sha1>``. Two more checks ride along:
a parsed message re-serialises to bytes that parse to the same message, and the stream framer cuts a stream
the same way however TCP chunks it.

``check`` needs no atheris, so tests can run the harness over a corpus (tests/unit/test_fuzz.py does).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from functools import partial

try:
    import atheris  # type: ignore[import-untyped, unused-ignore]

    HAVE_ATHERIS = True
except ImportError:  # the harness stays importable; main() says how to install it
    HAVE_ATHERIS = False

if HAVE_ATHERIS:
    # Not "RegEx": atheris 3.0.0's regex hook raises TypeError on a bytes pattern (parser.py has one);
    # fuzz/sip.dict gives libFuzzer the grammar's literals instead.
    atheris.enabled_hooks.add("str")
with atheris.instrument_imports(include=["proxy"]) if HAVE_ATHERIS else contextlib.nullcontext():
    from proxy.sip.errors import SipError
    from proxy.sip.headers import parse_name_addr
    from proxy.sip.message import Request, Response, parse_message
    from proxy.sip.parser import FramingError, StreamFramer

HEADER_VALUE_PARSERS = ("request_uri", "from_", "to", "vias", "cseq", "top_via")


def answered(call: Callable[[], object]) -> object:
    """Run ``call``; a SipError is a proper answer (None), anything else propagates as a crash."""
    try:
        return call()
    except SipError:
        return None


def check_message(data: bytes, datagram: bool) -> None:
    message = answered(lambda: parse_message(data, datagram=datagram))
    if not isinstance(message, Request | Response):
        return
    for name in HEADER_VALUE_PARSERS:
        if name != "request_uri" or isinstance(message, Request):
            answered(partial(getattr, message, name))
    for value in message.headers.get_all("route") + message.headers.get_all("record-route"):
        answered(partial(parse_name_addr, value))
    try:
        again = parse_message(message.to_bytes(), datagram=datagram)  # what we send, we must read back
    except SipError as exc:
        raise AssertionError(f"re-serialised message does not parse: {exc.reason}") from exc
    expected = list(message.headers.items)
    if "content-length" not in message.headers:
        expected.append(("content-length", "Content-Length", str(len(message.body))))
    got = (again.start_line(), again.headers.items, again.body)
    if got != (message.start_line(), expected, message.body):
        raise AssertionError(f"re-serialised message parses differently: {got!r}")


def frames(chunks: list[bytes]) -> list[object]:
    framer = StreamFramer()
    out: list[object] = []
    for chunk in chunks:
        for frame in framer.feed(chunk):
            if isinstance(frame, FramingError):
                out.append((type(frame.error), frame.error.reason, frame.head, frame.fatal))
            else:
                out.append(frame)
    return out


def check_stream(data: bytes) -> None:
    whole = frames([data])
    step = 1 + len(data) % 97  # deterministic per input, so a crash reproduces
    if frames([data[i : i + step] for i in range(0, len(data), step)]) != whole:
        raise AssertionError(f"framing depends on chunking ({step}-byte chunks)")
    for frame in whole:
        if isinstance(frame, bytes):
            check_message(frame, datagram=False)


def check(data: bytes) -> None:
    """One fuzz input: as a UDP datagram, as one whole stream message, and as a chunked TCP stream."""
    check_message(data, datagram=True)
    check_message(data, datagram=False)
    check_stream(data)


def main(argv: list[str] | None = None) -> int:
    if not HAVE_ATHERIS:
        print(
            f"fuzz_parser: atheris is not installed in this interpreter; run '{sys.executable} -m pip install "
            "atheris' (a prebuilt wheel on x86_64 Linux; elsewhere it builds from source and needs clang with "
            "libFuzzer). tests/unit/test_fuzz.py runs the same checks without it.",
            file=sys.stderr,
        )
        return 2
    atheris.Setup(sys.argv if argv is None else argv, check)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
