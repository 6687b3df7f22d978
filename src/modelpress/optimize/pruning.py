"""Handlers for pruning steps (registered with ``steps.register_handler``)."""
