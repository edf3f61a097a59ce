"""mnv2export: train MobileNetV2 classifiers, export them (TorchScript, ONNX FP32/INT8/FP16), check and benchmark them."""

__version__ = "0.1.0"
