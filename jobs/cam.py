"""`make cam`: Probabilities, CAM and pseudo boxes in one streaming pass."""

from engine.cam_stages import run_cam
from jobs._cli import job_main

main = job_main(run_cam, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
