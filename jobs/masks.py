"""`make masks`: Pseudo masks (COCO RLE, original px) from the pseudo boxes, with QC flags."""

from jobs._cli import job_main

main = job_main("engine.stages.masks:run_masks", __doc__, "masks")

if __name__ == "__main__":
    raise SystemExit(main())
