"""`python -m jobs <stage> --config FILE key=value ...`: the one entry point of every make target."""

from __future__ import annotations

import sys

from jobs import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
