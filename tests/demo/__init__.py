"""Tests of the demo-only pieces."""
