"""A backend's op table is complete by construction (issue 15): a table built from DFC_OP_LIST with no fallback (as
a CUDA backend's will be) does not link when one kernel is missing, struct dfc_ops and DFC_OP_LIST cannot drift
apart, and the CPU table falls back to the reference kernel for every op cpu.h does not list. Compiles small C
programs against csrc/ops/ops.h with the C compiler on PATH."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler on PATH")


def op_names() -> list[str]:
    text = (CSRC / "ops" / "ops.h").read_text()
    body = text[text.index("#define DFC_OP_LIST(X)") :]
    body = body[: body.index("\n\n")]
    return re.findall(r"X\((\w+)\)", body)


def compile_and_link(tmp_path: Path, table_source: str, kernels_source: str) -> subprocess.CompletedProcess:
    (tmp_path / "table.c").write_text(table_source)
    (tmp_path / "kernels.c").write_text(kernels_source)
    return subprocess.run(
        [
            CC,
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{CSRC}",
            str(tmp_path / "table.c"),
            str(tmp_path / "kernels.c"),
            "-o",
            str(tmp_path / "table"),
        ],
        capture_output=True,
        text=True,
    )


def test_the_op_list_names_every_member_of_the_table():
    names = op_names()
    assert len(names) == len(set(names)) and {"conv2d_forward", "adamw_step", "scale"} <= set(names)


def test_a_member_missing_from_the_list_does_not_compile(tmp_path):
    ops_h = (
        (CSRC / "ops" / "ops.h")
        .read_text()
        .replace("} dfc_ops;", "    dfc_status (*forgotten_op)(dfc_backend *be, dfc_error *err);\n} dfc_ops;")
    )
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "ops.h").write_text(ops_h.replace('"../core/', f'"{CSRC}/core/'))
    src = tmp_path / "drift.c"
    src.write_text('#include "ops/ops.h"\n')
    result = subprocess.run(
        [CC, "-std=c11", f"-I{tmp_path}", "-fsyntax-only", str(src)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "DFC_OP_LIST must name the same ops" in result.stderr


def test_a_table_without_fallback_does_not_link_when_a_kernel_is_missing(tmp_path):
    """The recipe of ref_backend.c (and of a CUDA backend): declare prefix_<op> for every op, fill the table from
    DFC_OP_LIST. A kernel that is not written leaves an undefined symbol, never a NULL entry."""
    names = op_names()
    table = (
        '#include "ops/ops.h"\n'
        "#define DECLARE(name) DFC_DECLARE_OP_(test, name)\nDFC_OP_LIST(DECLARE)\n"
        "#define ENTRY(name) DFC_OP_ENTRY_(test, name)\nconst dfc_ops test_ops = {DFC_OP_LIST(ENTRY)};\n"
        "int main(void) { return test_ops.scale ? 0 : 1; }\n"
    )

    def kernels(defined):  # the symbols the table needs (their signatures are checked in table.c)
        return "".join(f"void test_{name}(void) {{}}\n" for name in defined)

    complete = compile_and_link(tmp_path, table, kernels(names))
    assert complete.returncode == 0, complete.stderr
    missing = compile_and_link(tmp_path, table, kernels(names[:-1]))
    assert missing.returncode != 0 and f"test_{names[-1]}" in missing.stderr


def test_the_cpu_table_is_generated_from_the_op_list():
    source = (CSRC / "ops" / "cpu_backend.c").read_text()
    assert "DFC_OP_LIST(DFC_REF_ENTRY)" in source and "DFC_CPU_FAST_OPS(DFC_CPU_ENTRY)" in source
    fast = re.findall(r"X\((\w+)\)", (CSRC / "ops" / "cpu.h").read_text())
    assert set(fast) <= set(op_names())


def test_nothing_compares_backend_names_outside_the_registry():
    """Backends are driven through their interface: the only name comparison is the registry's lookup."""
    backend_name = re.compile(r'"(ref|cpu|cuda)"|dfc_backend_name|iface->name|registry')
    for path in CSRC.rglob("*.[ch]"):
        for m in re.finditer(r"strn?cmp\s*\(([^;]*)", path.read_text()):
            if backend_name.search(m.group(1)):
                assert path.name == "backend.c" and "registry[i]->name" in m.group(1), (path, m.group(0))
