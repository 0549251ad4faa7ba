"""RFC 3261 §17 states, explicit (proxy/relay/state.py): each transaction kind moves only along its figure's
arrows (RFC 6026's Accepted for INVITE 2xx), the core drives them as messages pass, and an illegal move is a
bug that raises instead of going unnoticed."""

from __future__ import annotations

import pytest

from proxy.relay.state import CLIENT_NEXT, SERVER_NEXT, ClientTx, IllegalTransition, ServerTx, TxState
from proxy.sip.message import Request, parse_message
from tests.unit.relay_harness import CISCO_OUT, LYNC_IN, TO_CUPS, answer, forwarded, make_proxy, request, send

S = TxState


def _parsed(method: str) -> Request:
    parsed = parse_message(request(method))
    assert isinstance(parsed, Request)
    return parsed


def server(method: str) -> ServerTx:
    return ServerTx(("b", "127.0.0.3", method), _parsed(method), LYNC_IN, method == "INVITE")


def client(method: str) -> ClientTx:
    return ClientTx(1, "z9hG4bKx", method, TO_CUPS, b"", _parsed(method), None)


def test_each_kind_starts_where_its_figure_does() -> None:
    assert server("INVITE").state is S.PROCEEDING  # §17.2.1: created in Proceeding
    assert server("MESSAGE").state is S.TRYING  # §17.2.2
    assert client("INVITE").state is S.CALLING  # §17.1.1.2
    assert client("SUBSCRIBE").state is S.TRYING  # §17.1.2.2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("MESSAGE", [S.PROCEEDING, S.COMPLETED, S.TERMINATED]),
        ("INVITE", [S.COMPLETED, S.CONFIRMED, S.TERMINATED]),
        ("INVITE", [S.ACCEPTED, S.TERMINATED]),
    ],
)
def test_server_transactions_follow_their_figure(method: str, path: list[TxState]) -> None:
    tx = server(method)
    for state in path:
        tx.to(state)
    assert tx.state is S.TERMINATED


@pytest.mark.parametrize(
    ("method", "start", "bad"),
    [
        ("MESSAGE", S.COMPLETED, S.PROCEEDING),  # no provisional after a final
        ("MESSAGE", S.TRYING, S.CONFIRMED),  # Confirmed is INVITE's alone
        ("INVITE", S.ACCEPTED, S.COMPLETED),  # a 2xx then a non-2xx
        ("INVITE", S.PROCEEDING, S.TRYING),
    ],
)
def test_an_illegal_server_move_raises(method: str, start: TxState, bad: TxState) -> None:
    tx = server(method)
    tx.state = start
    with pytest.raises(IllegalTransition, match=f"{start.value} -> {bad.value}"):
        tx.to(bad)


def test_an_illegal_client_move_raises() -> None:
    tx = client("INVITE")
    tx.to(S.ACCEPTED)
    with pytest.raises(IllegalTransition):
        tx.to(S.PROCEEDING)
    tx = client("MESSAGE")
    with pytest.raises(IllegalTransition):
        tx.to(S.CALLING)


def test_terminated_is_final_in_every_table() -> None:
    for table in (SERVER_NEXT, CLIENT_NEXT):
        assert all(state is not S.TERMINATED for _, state in table)
        assert all(S.TERMINATED in nexts for nexts in table.values())


def test_the_core_moves_a_relayed_message_through_its_states() -> None:
    px = make_proxy()
    _, sent = forwarded(send(px, request("MESSAGE")))
    [stx] = px.server_txs.values()
    ctx = stx.client
    assert ctx is not None
    assert (stx.state, ctx.state) == (S.TRYING, S.TRYING)
    assert send(px, answer(sent.to_bytes(), 180, "Ringing"), CISCO_OUT)
    assert (stx.state, ctx.state) == (S.PROCEEDING, S.PROCEEDING)  # the provisional went upstream
    send(px, answer(sent.to_bytes(), 200, "OK"), CISCO_OUT)
    assert ctx.state is S.TERMINATED  # a non-INVITE client transaction over TLS ends at its final (Timer K = 0)
    assert stx.state is S.TERMINATED  # §17.2.2: Timer J is 0 over a reliable transport
    assert stx.key not in px.server_txs
