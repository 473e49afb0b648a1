"""Engines: model resolution and loading, and the executor that runs a plan. Touches torch."""
