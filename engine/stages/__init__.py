"""One module per make target, plus common.py with the run helpers they share; no stage imports another."""
