"""Tests of engine/stages."""
