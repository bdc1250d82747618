"""Tests of engine/runtime."""
