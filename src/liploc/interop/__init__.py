"""Interoperability: the model outside liploc's torch code (ONNX export and an onnxruntime encoder)."""
