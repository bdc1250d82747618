"""`make infer`: Predict a split with the model actor pool."""

from jobs._cli import job_main

main = job_main("engine.stages.infer:run_infer", __doc__, "infer")

if __name__ == "__main__":
    raise SystemExit(main())
