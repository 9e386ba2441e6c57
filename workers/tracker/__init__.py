"""The uffd-wp dirty tracker: pre-copy passes that never freeze the tree (docs/strategies.md)."""
