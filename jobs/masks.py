"""`make masks`: Pseudo masks (COCO RLE, original px) from the pseudo boxes, with QC flags."""

from engine.masks_stage import run_masks
from jobs._cli import job_main

main = job_main(run_masks, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
