"""`make bench`: the harness that runs stages side by side with a plain loop (it sits above engine/stages)."""
