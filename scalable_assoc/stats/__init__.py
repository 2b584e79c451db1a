"""Vectorised statistics (numpy/scipy only): abundance transforms and multiple testing."""
