"""Job files: schema, readers, validation, result writers, manifest and resume."""
