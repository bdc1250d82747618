"""`make evaluate`: Weak localisation scored against the Abnormal GT boxes; COCO box prompts."""

from engine.evaluate_stage import run_evaluate
from jobs._cli import job_main

main = job_main(run_evaluate, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
