"""`make index`: Index a BS-80K data root into Parquet tables."""

from engine.data_stages import run_index
from jobs._cli import job_main

main = job_main(run_index, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
