"""Interoperability with other code: import of the LIP-Loc authors' checkpoints, ONNX export and an
onnxruntime encoder that needs no torch."""
