"""The node side of ferry: what touches processes, namespaces and bytes."""
