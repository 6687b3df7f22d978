"""Celery tasks: thin wrappers that take a job id and call ``modelpress.optimize``."""
