"""`make threshold`: Choose the operating threshold on val."""

from jobs._cli import job_main

main = job_main("engine.stages.threshold:run_threshold", __doc__, "threshold")

if __name__ == "__main__":
    raise SystemExit(main())
