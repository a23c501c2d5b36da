#!/usr/bin/env bash
# The GPU run of the CUDA backend (issue 16), as one prepared command for a lent device machine, which has nvcc,
# a python3 with numpy, torch, pytest and the cuDNN/cuBLAS wheels, and no package index.
#
# 1. Here (PyPI reachable), once:  bash scripts/gpu_check.sh --prepare
#    puts the oneDNN wheels and zlib's headers (what the device image lacks) into .gpu_carry/ (git-ignored, ~40 MB).
# 2. On the device, one call:  run(command="bash scripts/gpu_check.sh", carry=[".gpu_carry"], timeout_s=580)
#    (the stages' timeouts add up to 560 s; the lease is 15 minutes in all, its start included)
#    It builds the extension and the plugin for sm_90, runs the op tests on the GPU (every test parametrized over
#    ALL_BACKENDS gets a [cuda] case there) and the network/sampler CUDA tests, compute-sanitizer's memcheck over the
#    CUDA op tests, benchmarks/gpu.py and benchmarks/precision.py (tf32, bf16 vs fp32); everything is logged to $OUT (one
#    file per stage), each stage under its own timeout so a hang costs one stage, not the lease.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    rm -rf .gpu_carry && mkdir -p .gpu_carry
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        -d .gpu_carry onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0
    (cd .gpu_carry && apt-get download -q zlib1g-dev)
    du -sh .gpu_carry
    exit 0
fi

OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
stage() { # stage NAME SECONDS COMMAND...: runs COMMAND under a timeout, its output in $OUT/NAME.txt
    local name=$1 seconds=$2
    shift 2
    local start=$SECONDS
    timeout "$seconds" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: rc=$rc in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    tail -3 "$OUT/$name.txt" | sed 's/^/    /' | tee -a "$OUT/summary.txt"
    return $rc
}

stage machine 20 bash -c 'nvidia-smi; python3 -V; nvcc --version | tail -1; python3 -c "import numpy, torch; print(numpy.__version__, torch.__version__, torch.cuda.is_available())"'
stage deps 30 python3 -m pip install --no-index --no-deps .gpu_carry/*.whl
if [ ! -f /usr/include/zlib.h ]; then
    dpkg -x .gpu_carry/zlib1g-dev*.deb /tmp/zlib
    mkdir -p /tmp/zlib/lib && ln -sf "$(ldconfig -p | awk '/libz.so.1 /{print $NF; exit}')" /tmp/zlib/lib/libz.so
    export CPATH=/tmp/zlib/usr/include LIBRARY_PATH=/tmp/zlib/lib
fi
# no DIFFICE_WERROR here: CI enforces warnings; a newer host compiler on the GPU image must not cost the lease
export DIFFICE_CUDA_ARCHS=90 OMP_NUM_THREADS=8
stage build 150 python3 setup.py build_ext --inplace -j16 || { echo "build failed: see build.txt" | tee -a "$OUT/summary.txt"; exit 1; }
stage available 15 python3 -c "import diffice; print(diffice.build_info(), diffice.cuda_available()); diffice.ops.get_backend('cuda')"
# the tests launch synchronously: a kernel that faults is reported by its own op's launch check, not by a later
# synchronize (the benchmarks below run asynchronously, as users do)
stage op_tests 85 env CUDA_LAUNCH_BLOCKING=1 python3 -m pytest -q -p no:cacheprovider -k "cuda and not cuda_emulated" tests/test_ops_*.py tests/test_cuda_backend.py
stage gpu_tests 55 env CUDA_LAUNCH_BLOCKING=1 python3 -m pytest -q -p no:cacheprovider -k "cuda and not cuda_emulated" tests/test_cuda_networks.py tests/test_cuda_dense.py tests/test_cuda_bf16.py
stage memcheck 50 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -x -p no:cacheprovider -k "cuda and not cuda_emulated" tests/test_ops_elementwise.py tests/test_ops_norm.py
# a first look at speed: Diff-ICE_1 at tau 20 (the paper's tau 120 costs 6x the guided steps); the full table is
# `python3 benchmarks/gpu.py` once the kernels are known to be right
# DIFFICE_CUDA_LOG_PLANS: each convolution's cuDNN algorithm, math mode and workspace, once per shape, in bench.txt
stage bench 105 env DIFFICE_CUDA_LOG_PLANS=1 python3 benchmarks/gpu.py --tau 20 --methods diff-ice-1 diff-ice-1-xt --jsonl "$OUT/bench.jsonl"
# how far precisions "tf32" and "bf16" move the counterfactuals from fp32 (the README's CUDA section)
stage precision 50 python3 benchmarks/precision.py --batch 4 --taus 1 5 --jsonl "$OUT/precision.jsonl"
cat "$OUT/summary.txt"
