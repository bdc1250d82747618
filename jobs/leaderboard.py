"""`make leaderboard`: test metrics at each run's selected threshold, one row per run."""

from engine.classify_stages import run_leaderboard
from jobs._cli import job_main

main = job_main(run_leaderboard, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
