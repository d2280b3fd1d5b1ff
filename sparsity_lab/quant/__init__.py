"""Sparsity and quantization (lecture 07): int8 and FP8 dynamic quantization, their Triton kernels, int8 and FP8
(2:4) layers."""
