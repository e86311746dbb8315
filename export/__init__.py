"""The Gemma 4 E-model decoder in PyTorch, checkpoint loading and lowering to ExecuTorch / ONNX."""
