"""Triton kernels (imported lazily: Triton is an optional extra)."""
