"""Triton kernels, one module per kernel; each imports Triton lazily so the package works without it."""
