"""`make infer`: Predict a split with the model actor pool."""

from engine.cam_stages import run_infer
from jobs._cli import job_main

main = job_main(run_infer, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
