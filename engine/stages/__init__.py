"""One module per make target; `_run`, `_rows` and `_scoring` hold the helpers they share. No stage imports another."""
