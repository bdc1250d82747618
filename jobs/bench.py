"""`make bench`: model-only vs plain loop vs engine throughput, and peak memory at N and 10 x N images."""

from engine.bench_stage import run_bench
from jobs._cli import job_main

main = job_main(run_bench, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
