"""How many index rows go in each Ray Data block: pure sizing rules, no Ray."""

from __future__ import annotations

import math


def index_block_sizes(n_rows: int, call_rows: int, workers: int, in_flight: int = 4, max_calls: int = 16) -> list[int]:
    """Returns the rows of each block, in stream order, of an index stream whose rows the model actors decode.

    Every block is a whole number of actor calls (nothing is re-bundled; only the last block may hold fewer rows)
    and at most `max_calls` calls (a block is the unit a restarted actor redoes). Blocks shrink as the stream
    drains (guided self-scheduling): each holds 1 / (workers x in_flight) of the calls still to come, so the
    blocks queued on the actors (`in_flight` each) never hold more than their share of the rest and the actors
    finish together instead of one draining a full block alone. Each block is one actor task: fewer, larger
    blocks ran the index-row feed ~2x faster on 2 cores than one call per block (BENCHMARKS.md, the feed).
    """
    n_rows, call_rows = max(int(n_rows), 0), max(int(call_rows), 1)
    share, cap = max(int(workers), 1) * max(int(in_flight), 1), max(int(max_calls), 1)
    calls_left, sizes = math.ceil(n_rows / call_rows), []
    while calls_left > 0:
        calls = min(max(math.ceil(calls_left / share), 1), cap)
        sizes.append(calls * call_rows)
        calls_left -= calls
    if sizes:
        sizes[-1] -= sum(sizes) - n_rows
    return sizes
