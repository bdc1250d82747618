"""The test suite: tests/<room>/ mirrors engine/<room>/, tests/e2e/ runs whole jobs."""
