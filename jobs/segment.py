"""`make segment`: The trained segmentation network's masks (COCO RLE, original px) for a split -> seg_masks."""

from engine.stages.segment import run_segment
from jobs._cli import job_main

main = job_main(run_segment, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
