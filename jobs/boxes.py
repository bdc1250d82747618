"""`make boxes`: Recompute pseudo boxes from stored heatmaps."""

from engine.cam_stages import run_boxes
from jobs._cli import job_main

main = job_main(run_boxes, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
