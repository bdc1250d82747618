"""`make train`: Train the classifier with Ray Train."""

from engine.classify_stages import run_train
from jobs._cli import job_main

main = job_main(run_train, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
