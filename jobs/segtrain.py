"""`make segtrain`: Train a segmentation network (smp, timm encoder) on the kept pseudo masks with Ray Train."""

from engine.segtrain_stage import run_segtrain
from jobs._cli import job_main

main = job_main(run_segtrain, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
