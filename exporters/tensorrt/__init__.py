"""ONNX -> TensorRT engine (GPU only; TensorRT imported lazily): build options and precision routes
for TensorRT 10 and 11, the fp16 ONNX of the strongly typed route, the timing cache."""
