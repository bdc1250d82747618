"""`make split`: Patient-level train/val/test split."""

from engine.data_stages import run_split
from jobs._cli import job_main

main = job_main(run_split, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
