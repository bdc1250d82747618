"""Pure functions on arrays and frames: no Ray, no pyarrow, no file I/O (checked by tests/test_layout.py)."""
