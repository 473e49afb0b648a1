"""`uellm run` as data flow, and the front half `uellm plan` shares (docs/architecture.md)."""
