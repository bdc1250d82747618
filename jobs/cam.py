"""`make cam`: Probabilities, CAM and pseudo boxes in one streaming pass."""

from jobs._cli import job_main

main = job_main("engine.stages.cam:run_cam", __doc__, "cam")

if __name__ == "__main__":
    raise SystemExit(main())
