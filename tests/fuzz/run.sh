#!/usr/bin/env bash
# Builds the libFuzzer harnesses for diffice's C file readers and runs each for a fixed budget.
#
#   tests/fuzz/run.sh [seconds per harness, default 60] [harness ...]
#
# Harnesses: safetensors, npz (zip + .npy), torch (zip and legacy checkpoints), pickle (the restricted
# unpickler behind a well-formed in-memory zip). Each starts from tests/fuzz/corpus/<name> (read-only: new inputs
# go to a scratch folder) and fails on any crash, sanitizer report (ASan + UBSan), input slower than 10 s, RSS over
# 2 GB or a single allocation over 256 MB (inputs are at most 64 KB, so a bigger allocation means a size claimed
# by the file was trusted). A failing input is kept as $FUZZ_OUT/<name>/crash-* and the script exits non-zero.
# Needs clang with libFuzzer (apt-get install clang) and the zlib headers.
#
# Environment: CC (default clang), FUZZ_OUT (default build/fuzz: binaries, objects, scratch corpora, crashes).
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_EACH=${1:-60}
shift || true
HARNESSES=("$@")
[ ${#HARNESSES[@]} -eq 0 ] && HARNESSES=(safetensors npz torch pickle)
CC=${CC:-clang}
OUT=${FUZZ_OUT:-build/fuzz}
mkdir -p "$OUT"

# Every csrc/io source but the loaders (weights.c), which the harnesses do not use: the link then also checks that
# nothing below the loaders calls them.
SOURCES=(csrc/io/convert.c csrc/io/npz.c csrc/io/safetensors.c csrc/io/torch_pickle.c csrc/io/weight_set.c
         csrc/io/zip.c csrc/core/error.c csrc/core/tensor.c)
CFLAGS=(-std=c11 -g -O1 -Wall -Wextra -Werror -fno-omit-frame-pointer
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Icsrc -Icsrc/io)

# The readers are compiled once into $OUT/obj and relinked per harness; a file is recompiled when its source or
# any header under csrc/core, csrc/io or tests/fuzz is newer than its object.
mkdir -p "$OUT/obj"
newest_header=$(ls -t csrc/core/*.h csrc/io/*.h tests/fuzz/*.h | head -1)
compile() {  # source object
    if [ ! -f "$2" ] || [ "$1" -nt "$2" ] || [ "$newest_header" -nt "$2" ]; then
        "$CC" "${CFLAGS[@]}" -c "$1" -o "$2"
    fi
}
OBJECTS=()
for src in "${SOURCES[@]}"; do
    obj="$OUT/obj/$(basename "${src%.c}").o"
    compile "$src" "$obj"
    OBJECTS+=("$obj")
done

status=0
for h in "${HARNESSES[@]}"; do
    exe="$OUT/fuzz_$h"
    compile "tests/fuzz/fuzz_$h.c" "$OUT/obj/fuzz_$h.o"
    "$CC" "${CFLAGS[@]}" "$OUT/obj/fuzz_$h.o" "${OBJECTS[@]}" -lz -lm -o "$exe"
    work="$OUT/$h"
    mkdir -p "$work/corpus"
    log="$work/log.txt"
    echo "== fuzz_$h: ${SECONDS_EACH}s from tests/fuzz/corpus/$h"
    if UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 \
        "$exe" "$work/corpus" "tests/fuzz/corpus/$h" -max_total_time="$SECONDS_EACH" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=256 -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$work/" >"$log" 2>&1; then
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
        echo "   ok: $execs executions, $cov"
    else
        echo "   FAILED (log: $log)"
        grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -20 || tail -30 "$log"
        status=1
    fi
done
exit $status
