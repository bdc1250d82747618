"""`make synth`: Generate a synthetic BS-80K-shaped dataset."""

from engine.data_stages import run_synth
from jobs._cli import job_main

main = job_main(run_synth, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
