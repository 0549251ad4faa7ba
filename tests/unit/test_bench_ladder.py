"""The bench's step-up ladder: doubling, one retry of a failed step, bisection; disturbed failures rerun."""

from bench.phases import _Ladder


def climb(ladder: _Ladder, limit: int, disturbed: frozenset[int] = frozenset(), max_rounds: int = 50) -> list[int]:
    """Run the ladder against a proxy that passes every rate up to ``limit``; ``disturbed`` rates fail once
    with other jobs on the machine."""
    tried: list[int] = []
    pending = set(disturbed)
    for _ in range(max_rounds):  # bounded
        if ladder.done:
            break
        rate = ladder.next_rate()
        tried.append(rate)
        if rate in pending:
            pending.discard(rate)
            ladder.record(rate, False, disturbed=True)
        else:
            ladder.record(rate, rate <= limit)
    return tried


def test_ladder_doubles_retries_once_then_bisects() -> None:
    ladder = _Ladder(start=500, max_steps=10)
    assert climb(ladder, limit=3000) == [500, 1000, 2000, 4000, 4000, 3000, 3500, 3500, 3250, 3250]
    assert ladder.best == 3000


def test_a_disturbed_failure_is_run_again_and_does_not_end_the_climb() -> None:
    ladder = _Ladder(start=500, max_steps=10)
    assert climb(ladder, limit=3000, disturbed={2000}) == [
        500,
        1000,
        2000,
        2000,
        4000,
        4000,
        3000,
        3500,
        3500,
        3250,
    ]  # max_steps
    assert ladder.best == 3000
    undisturbed = _Ladder(start=500, max_steps=10)
    climb(undisturbed, limit=3000)
    assert undisturbed.disturbed_retries == 0
    assert ladder.disturbed_retries == 1
