"""`make leaderboard`: test metrics at each run's selected threshold, one row per run."""

import sys

from engine.classify_stages import run_leaderboard
from engine.tables import resolve_fs
from jobs._cli import parse_config


def main(argv: list[str] | None = None) -> int:
    """Prints the leaderboard of `leaderboard.runs` and writes it as Parquet beside the runs."""
    cfg = parse_config(argv, __doc__)
    board = run_leaderboard(cfg.leaderboard.runs)
    if board.empty:
        print(f"no run under {cfg.leaderboard.runs} has test metrics yet (run `make infer` first)", file=sys.stderr)
        return 1
    fs, root = resolve_fs(cfg.leaderboard.runs)
    board.to_parquet(f"{root}/leaderboard.parquet", index=False)
    print(board.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
