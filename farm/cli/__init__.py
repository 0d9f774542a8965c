"""The `farm` command line: one module per command group, thin over the packages beside it."""
