"""The field's exchange formats: ONNX networks, VNN-LIB properties and VNN-COMP ``instances.csv``.

- :mod:`harness.exchange.vnnlib`: parse / write VNN-LIB (input box + output property), no dependency.
- :mod:`harness.exchange.onnx_io`: export a harness model to ONNX and convert an ONNX network back
  into an ``nn.Sequential`` of the layers every certifier of :mod:`harness.bounds` knows.
- :mod:`harness.exchange.instances`: VNN-COMP's ``instances.csv`` (onnx, vnnlib, timeout).

``onnx`` and ``onnxruntime`` are imported by :mod:`harness.exchange.onnx_io` only, so the VNN-LIB
half works without them.
"""
