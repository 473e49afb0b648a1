"""Metrics (one definition each) and their rendering."""
