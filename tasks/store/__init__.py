"""ferry's state in Redis: migration and evacuation records, event streams, the node registry."""
