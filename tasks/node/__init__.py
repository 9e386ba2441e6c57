"""A node's side of the queue: its Celery tasks, what each phase does, its worker process."""
