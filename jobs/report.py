"""`make report`: One offline HTML page of the run: curves, confusion matrix, localisation table, overlay gallery."""

from jobs._cli import job_main

main = job_main("engine.stages.report:run_report", __doc__, "report")

if __name__ == "__main__":
    raise SystemExit(main())
