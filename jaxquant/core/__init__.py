"""Core array-level quantization: the QArray type, block scales and round-to-nearest."""
