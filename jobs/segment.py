"""`make segment`: The trained segmentation network's masks (COCO RLE, original px) for a split -> seg_masks."""

from jobs._cli import job_main

main = job_main("engine.stages.segment:run_segment", __doc__, "segment")

if __name__ == "__main__":
    raise SystemExit(main())
