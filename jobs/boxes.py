"""`make boxes`: Recompute pseudo boxes from stored heatmaps."""

from jobs._cli import job_main

main = job_main("engine.stages.boxes:run_boxes", __doc__, "boxes")

if __name__ == "__main__":
    raise SystemExit(main())
