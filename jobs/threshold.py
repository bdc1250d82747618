"""`make threshold`: Choose the operating threshold on val."""

from engine.classify_stages import run_threshold
from jobs._cli import job_main

main = job_main(run_threshold, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
