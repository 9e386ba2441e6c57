"""The runtime seam and its drivers: criu (ferry's containers) and sim (a model)."""
