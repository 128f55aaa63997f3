"""The service tier: Celery workers on Redis (``worker.celery_app``, ``worker.tasks``) and the FastAPI
search API (``worker.api``)."""
