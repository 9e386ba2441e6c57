"""The queue side of ferry: everything that crosses Celery."""
