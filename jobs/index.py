"""`make index`: Index a BS-80K data root into Parquet tables."""

from jobs._cli import job_main

main = job_main("engine.stages.index:run_index", __doc__, "index")

if __name__ == "__main__":
    raise SystemExit(main())
