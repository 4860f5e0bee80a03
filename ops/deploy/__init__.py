"""Deployment, the same for every task: ONNX export and parity, INT8 quantisation, pruning,
TensorRT engines, one Predictor interface over every runtime, and the side-by-side benchmark."""
