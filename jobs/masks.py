"""`make masks`: Pseudo masks (COCO RLE, original px) from the pseudo boxes, with QC flags."""

from jobs._cli import job_main

main = job_main("engine.masks_stage:run_masks", __doc__, "masks")

if __name__ == "__main__":
    raise SystemExit(main())
