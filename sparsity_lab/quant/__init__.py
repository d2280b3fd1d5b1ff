"""Sparsity and quantization (lecture 07): int8 dynamic quantization, its Triton kernels, int8 (2:4) layers."""
