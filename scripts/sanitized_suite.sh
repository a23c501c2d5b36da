#!/bin/bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer, in a separate checkout of HEAD (the
# normal in-place build stays as it is). Every sanitizer report, from the test process or from a process the tests
# start, goes to a log file; the run fails if pytest fails or if any report was written.
#   scripts/sanitized_suite.sh [WORKTREE [pytest args...]]      (default /tmp/diffice-asan, all of tests/)
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
tree=${1:-/tmp/diffice-asan}
shift || true
if [ -d "$tree" ]; then
    git -C "$tree" checkout -q --detach "$(git -C "$repo" rev-parse HEAD)"
else
    git -C "$repo" worktree add -q --detach "$tree" HEAD
fi
cd "$tree"
# build_ext runs in this environment, not pip's isolated one: it needs the oneDNN headers wheel here
python -c "import importlib.metadata as m; m.distribution('onednn-devel-cpu-gomp')" 2>/dev/null ||
    python -m pip install -q "onednn-devel-cpu-gomp==2023.2.0" "onednn-cpu-gomp==2023.2.0"
DIFFICE_SANITIZE=1 python setup.py -q build_ext --inplace --force -j2 >/dev/null  # --force: an earlier plain build is not reused
logs=$(mktemp -d /tmp/diffice-sanitizer-logs.XXXXXX)
# libasan first (the interpreter is not instrumented); libstdc++ with it, or ASan's __cxa_throw interceptor finds
# nothing to call and aborts the first C++ extension that throws (matplotlib's font module)
status=0
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)" \
ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:log_path=$logs/asan \
UBSAN_OPTIONS=print_stacktrace=1:log_path=$logs/ubsan \
DIFFICE_SHARED=${DIFFICE_SHARED:-$repo/../shared} \
    python -m pytest -q -p no:cacheprovider "${@:-tests}" || status=$?
# allocator_may_return_null=1 lets a deliberate huge request fail as it does without ASan (numpy raises MemoryError:
# Dask reading "HTTP/1.0" from a non-Dask service as a frame length), and ASan notes each such request: not a report
reports=$(for f in "$logs"/*; do [ -e "$f" ] && grep -q -v -e "WARNING: AddressSanitizer failed to allocate" -e '^$' "$f" && echo "$f"; done || true)
if [ -n "$reports" ]; then
    echo "sanitizer reports in $logs:" >&2
    echo "$reports" >&2
    exit 1
fi
echo "no sanitizer report (logs: $logs)"
exit $status
