"""`make evaluate`: Weak localisation scored against the Abnormal GT boxes; COCO box prompts."""

from jobs._cli import job_main

main = job_main("engine.stages.evaluate.run:run_evaluate", __doc__, "evaluate")

if __name__ == "__main__":
    raise SystemExit(main())
