"""Tensor data lives in backend memory (issue 15): the networks, the guidance, the sampler and the bindings touch it
only through the ops and the backend's memory functions (alloc/free/zero/copy_from_host/copy_to_host/copy), so a
device backend can hold it. A scan of csrc/diffusion, csrc/nets and csrc/python (comments removed) for the four ways
host code has touched it: a host arena, an element read or written through a tensor's data, a memcpy/memset on it,
a tensor viewing a (const) host array, float memory from malloc. Each place still allowed is listed with its reason;
an entry that no longer matches fails too, so the list only shrinks. What a scan cannot see: a numpy array handed to
an op without the copy in. The network, perceptual and sampler bindings copy in and out through the backend;
bind_ops.c (the per-op wrappers), bind_diffusion.c and bind_train.c still hand numpy's memory to the ops."""

from __future__ import annotations

import re
from pathlib import Path

CSRC = Path(__file__).resolve().parents[1] / "csrc"
SCANNED = ("diffusion", "nets", "python")

RULES = {
    "host arena (use dfc_arena_init_backend; host scratch from dfc_arena_host_alloc)": re.compile(
        r"\bdfc_arena_init\s*\("
    ),
    "element of a tensor's data read or written on the host (use an op)": re.compile(r"(->|\.)data\s*\["),
    "memcpy/memmove/memset on tensor data (use the backend's memory functions)": re.compile(
        r"\bmem(cpy|move|set)\s*\([^;]*\bdata\b"
    ),
    "tensor view of a host array (constants: dfc_channel_constants copies them in)": re.compile(
        r"\bdfc_tensor[1-4]\s*\(\s*\(\s*float\s*\*\s*\)"
    ),
    "float memory from the host allocator (tensor data comes from an arena or be->iface->alloc)": re.compile(
        r"float\s*\*[^;]*\b(malloc|calloc|realloc|aligned_alloc)\s*\(|\b(malloc|calloc|realloc|aligned_alloc)\s*\([^;]*"
        r"sizeof\s*\(\s*float\s*\)"
    ),
}

# (file under csrc, text on the line): why the host may touch it there.
ALLOWED = {
    ("python/bind_sampler.c", "x.data[j] < -1.0f"): "numpy's x, range-checked before it is copied in",
    ("python/bind_sampler.c", "memcpy(lam_t.data, lambda_c"): "lambda_c is a per-row host vector, lam_t numpy's",
    ("python/bind_diffusion.c", "memcpy(PyArray_DATA((PyArrayObject *)a), tables[i].data"): (
        "the schedule's float64 host tables, copied into new numpy arrays (no tensor data)"
    ),
    ("diffusion/schedule.c", "float *block = malloc"): "per-row coefficients: host vectors the ops take by value",
    ("nets/layers.c", "set->data = calloc"): "network parameters are still host memory (loaded and exposed to "
    "numpy in place): the one remaining gap for a device backend",
}


def strip_comments(text: str) -> str:
    """text with C comments blanked out, newlines kept (so line numbers hold)."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)


def findings() -> list[tuple[str, int, str, str]]:
    found = []
    for folder in SCANNED:
        for path in sorted((CSRC / folder).glob("*.[ch]")):
            name = path.relative_to(CSRC).as_posix()
            for number, line in enumerate(strip_comments(path.read_text()).splitlines(), 1):
                for rule, pattern in RULES.items():
                    if pattern.search(line):
                        found.append((name, number, line.strip(), rule))
    return found


def allowed_entry(name: str, line: str) -> tuple[str, str] | None:
    return next((key for key in ALLOWED if key[0] == name and key[1] in line), None)


def test_host_code_touches_no_tensor_data_outside_the_allowed_places():
    bad = [
        f"{name}:{number}: {rule}: {line}" for name, number, line, rule in findings() if not allowed_entry(name, line)
    ]
    assert not bad, "\n".join(bad)


def test_every_allowed_place_is_still_there():
    used = {allowed_entry(name, line) for name, _, line, _ in findings()}
    assert set(ALLOWED) <= used, f"stale entries (remove them): {sorted(set(ALLOWED) - used)}"


def test_the_scan_sees_what_it_forbids(tmp_path):
    """Each rule matches the kind of line it is for (and not a mention in a comment)."""
    lines = {
        "host arena": "dfc_arena_init(&a, 0, 0);",
        "element": "x->data[i] = 0.0f;",
        "memcpy": "memcpy(out, t.data, bytes);",
        "float memory": "float *copy = malloc(n * sizeof(float));",
        "tensor view": "dfc_tensor scale = dfc_tensor4((float *)SCALE, 1, 3, 1, 1);",
    }
    for key, line in lines.items():
        rule = next(r for r in RULES if r.startswith(key) or key in r)
        assert RULES[rule].search(strip_comments(line)), (key, line)
        assert not RULES[rule].search(strip_comments(f"/* {line} */")), key
