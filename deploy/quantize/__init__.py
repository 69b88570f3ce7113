"""INT8: an fp32 ONNX model calibrated on real images into explicit Q/DQ, gated on its accuracy.

``run.run_quantize`` is `deploy quantize`; ``recipes`` the two targets (TensorRT, ONNX Runtime
CPU) and the calibration methods, ``calibrate`` the ranges, ``qdq`` one quantization,
``sensitivity`` the SQNR ranking of the quantized nodes, ``gate`` the accuracy gate, ``report``
its typed record. ``onnxruntime.quantization`` does the quantizing (docs/int8.md says why).
"""
