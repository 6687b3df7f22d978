"""Handlers for distillation steps (registered with ``steps.register_handler``)."""
