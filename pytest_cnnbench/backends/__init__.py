"""Built-in backends, one module each behind the protocol in ``base``.

``registry.BUILTINS`` names each backend's class, so its module (and torch, ONNX Runtime
or TensorRT) is imported only when a cell actually runs.
"""
