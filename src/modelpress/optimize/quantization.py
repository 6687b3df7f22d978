"""Handlers for quantization steps (registered with ``steps.register_handler``)."""
