#!/bin/bash
# The one prepared run for a lent GPU (issue 6): the CUDA tests on the real device, then the
# training benchmark on the GPU (ours and PyTorch's), and a CPU comparison line. Results go to
# $OUT (or ./gpu_check) as text and JSON lines. Usage: OUT=dir bash scripts/gpu_check.sh
set -u
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
export SPARSELM_DATA=${SPARSELM_DATA:-../shared/data/ptb}
pip install -q -e ".[dev]" > "$OUT/install.log" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
# 1. the CUDA test suites on the GPU (kernels, the training step, backend selection)
SPARSELM_REAL_CUDA=1 timeout 300 python -m pytest -q -x tests/test_kernels_dense.py \
    tests/test_kernels_csr.py tests/test_kernels_cuda.py tests/test_cuda_training.py \
    > "$OUT/tests.txt" 2>&1
echo "tests rc=$?" >> "$OUT/tests.txt"
# 2. training tokens/s on the GPU: small, large (dense H=1500), H=1500 at d=0.0005
timeout 240 python scripts/bench_train.py --device cuda --configs small,large,h1500-d0.0005 \
    --reps 3 --steps 5 --eval > "$OUT/bench_cuda.jsonl" 2> "$OUT/bench_cuda.txt"
echo "bench rc=$?" >> "$OUT/bench_cuda.txt"
tail -5 "$OUT"/*.txt
