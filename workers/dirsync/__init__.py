"""Container directories not on shared storage: which may be synced, and rsync's passes."""
