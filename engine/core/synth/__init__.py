"""The synthetic patients' anatomy and draws (the generator's files are engine/io/synth.py)."""
