"""The Celery app, its queues, and what vouches for the messages on them."""
