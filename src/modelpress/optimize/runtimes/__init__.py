"""Deployment runtimes (torch, ONNX Runtime, OpenVINO) behind one interface; see ``base`` and ``registry``."""
