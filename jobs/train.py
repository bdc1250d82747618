"""`make train`: Train the classifier with Ray Train."""

from jobs._cli import job_main

main = job_main("engine.stages.train:run_train", __doc__, "train")

if __name__ == "__main__":
    raise SystemExit(main())
