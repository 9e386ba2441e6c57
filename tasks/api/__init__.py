"""What users hold: the Python API (Ferry, its handles), the ferry command, the local cluster."""
