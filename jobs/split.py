"""`make split`: Patient-level train/val/test split."""

from jobs._cli import job_main

main = job_main("engine.stages.split:run_split", __doc__, "split")

if __name__ == "__main__":
    raise SystemExit(main())
