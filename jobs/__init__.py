"""Thin command-line entry points, one per `make` target (`python -m jobs.<stage>`)."""
