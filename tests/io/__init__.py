"""Tests of engine/io."""
