#!/usr/bin/env bash
# The one command that checked and timed the block-sparse kernel on the lent H100 (run from a copy of the repo):
# correctness of both kernel variants (every dtype and block size, odd shapes, bias, empty rows, all-empty weight),
# the 8192^2 heatmap against cuBLAS and torch.sparse._triton_ops.bsr_dense_mm, the dispatcher's choices, then the
# GPU-marked tests. Results: $OUT/block_sparse_gpu.json (copied to sparsity_lab/recorded/), logs beside it.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/tc}
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
python3 -m sparsity_lab bench block_sparse --out "$OUT/block_sparse_gpu.json" --budget 150 2>&1 | tee "$OUT/log.txt"
timeout 60 python3 -m pytest -q -o addopts= -p no:cacheprovider -m gpu tests/test_bsr_kernel.py tests/test_block_sparse.py \
  2>&1 | tee "$OUT/pytest_gpu.txt" | tail -25
