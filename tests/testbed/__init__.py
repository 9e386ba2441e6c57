"""The local testbed: nodes as network namespaces on a bridge, shaped links, a private Redis."""
