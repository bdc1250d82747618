"""End-to-end tests: whole jobs on generated data and a real local Ray."""
