"""`make bench`: model-only vs plain loop vs engine throughput, and peak memory at N and 10 x N images."""

from jobs._cli import job_main

main = job_main("engine.bench.run:run_bench", __doc__, "bench")

if __name__ == "__main__":
    raise SystemExit(main())
