"""How many index rows go in one Ray Data block: pure sizing rules, no Ray."""

from __future__ import annotations

import math


def index_block_rows(n_rows: int, call_rows: int, workers: int, blocks_per_worker: int = 4,
                     max_calls: int = 16) -> int:  # fmt: skip
    """Returns the rows per block of an index stream whose rows are decoded by the model actors.

    A whole number of actor calls per block (nothing is re-bundled), about `blocks_per_worker` blocks per worker
    (actors x calls per actor; never under half that) so that the pool stays busy and balanced, and at most
    `max_calls` calls (a block is the unit a restarted actor redoes). Each block is one actor task: fewer, larger
    blocks ran the index-row feed ~2x faster on 2 cores (BENCHMARKS.md, the feed).
    """
    call_rows, workers = max(int(call_rows), 1), max(int(workers), 1)
    calls = math.ceil(max(int(n_rows), 1) / call_rows)
    per_block = math.ceil(calls / (workers * max(int(blocks_per_worker), 1)))
    return call_rows * min(max(per_block, 1), max(int(max_calls), 1))
