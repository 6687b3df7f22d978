"""Deployment runtimes (torch, ONNX Runtime, OpenVINO) behind one interface.

What lives here: ``base`` (the ``Runtime`` protocol and ``Exported``), ``registry`` (name → adapter,
imported lazily), one adapter module per runtime (``torch_rt``, ``onnxruntime_rt``, ``openvino_rt``),
and torch's whole-recipe build (``torch_recipe``, with ``torch_handle``).

What it may import: ``modelpress.errors``, ``optimize.artifacts``, ``optimize.measure``,
``optimize.techniques`` and the toolkits (inside methods, so that listing runtimes imports none);
``torch_recipe`` also the stage modules it is part of (``plan``, ``chain``, ``choose``). Never Celery, the
database, or ``optimize.job``.
"""
