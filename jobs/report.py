"""`make report`: One offline HTML page of the run: curves, confusion matrix, localisation table, overlay gallery."""

from engine.report import run_report
from jobs._cli import job_main

main = job_main(run_report, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
