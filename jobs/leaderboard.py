"""`make leaderboard`: test metrics at each run's selected threshold, one row per run."""

from jobs._cli import job_main

main = job_main("engine.stages.leaderboard:run_leaderboard", __doc__, "leaderboard")

if __name__ == "__main__":
    raise SystemExit(main())
