"""The pure core: decisions over typed records, no Celery, Redis, subprocess, socket or clock."""
