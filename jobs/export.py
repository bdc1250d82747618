"""`make export`: a DICOM run's results back as DICOM: Secondary Captures with the pseudo boxes and kept masks drawn
in (new series of the source study), Segmentations where the source allows, a summary per study."""

from jobs._cli import job_main

main = job_main("engine.stages.export:run_export", __doc__, "export")

if __name__ == "__main__":
    raise SystemExit(main())
