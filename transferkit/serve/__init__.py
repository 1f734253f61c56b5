"""HTTP service over an exported ONNX model: batched predictions, metadata, health and a small web page."""
