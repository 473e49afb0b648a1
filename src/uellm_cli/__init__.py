"""uellm: deadline-aware offline batch LLM inference (UELLM, done properly)."""

__version__ = "0.1.0"
