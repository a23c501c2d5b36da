"""The layering of the file readers in csrc/io (issue 15): dependencies flow one way, with no circle.

  weight_set (the collection + shared helpers)  <-  zip (the archive reader)
      <-  safetensors, npz, torch_pickle (the format parsers)  <-  weights (the loaders: sniff, pick a parser)

Read from the sources (#include lines, and the functions each file names), so it needs no build.
"""

from __future__ import annotations

import re
from pathlib import Path

IO = Path(__file__).resolve().parents[1] / "csrc" / "io"

# module -> (its files, the modules it may use). A new file in csrc/io has to be placed here.
MODULES = {
    "weight_set": ({"weight_set.h", "weight_set.c", "convert.c"}, set()),
    "zip": ({"zip.h", "zip.c"}, {"weight_set"}),
    "safetensors": ({"safetensors.h", "safetensors.c"}, {"weight_set"}),
    "npz": ({"npz.h", "npz.c"}, {"weight_set", "zip"}),
    "torch_pickle": ({"torch_pickle.h", "torch_pickle.c"}, {"weight_set", "zip"}),
    "weights": ({"weights.h", "weights.c"}, {"weight_set", "zip", "safetensors", "npz", "torch_pickle"}),
}
DISPATCHER_HEADER = "weights.h"


def sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(IO.iterdir()) if p.suffix in (".c", ".h")}


def without_comments_and_strings(text: str) -> str:
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"', " ", text, flags=re.S)


def local_includes(text: str) -> set[str]:
    """csrc/io headers named by #include "..." (not <system> ones, not ../core)."""
    return {m for m in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, flags=re.M) if "/" not in m}


def included_closure(name: str, files: dict[str, str]) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for inc in local_includes(files.get(todo.pop(), "")):
            if inc not in seen:
                seen.add(inc)
                todo.append(inc)
    return seen


def module_of(name: str) -> str | None:
    return next((m for m, (files, _) in MODULES.items() if name in files), None)


def test_nothing_below_the_dispatcher_includes_its_header():
    files = sources()
    for name in files:
        included = included_closure(name, files)
        if module_of(name) != "weights":
            assert DISPATCHER_HEADER not in included, (
                f"csrc/io/{name} includes {DISPATCHER_HEADER} (directly or through another header): only the "
                "loaders in weights.c may; the collection and the parsers must not know about them"
            )


def test_every_file_has_a_layer_and_includes_only_lower_ones():
    files = sources()
    unplaced = sorted(n for n in files if module_of(n) is None)
    assert not unplaced, f"csrc/io files not placed in a layer (see MODULES in {Path(__file__).name}): {unplaced}"
    for name, text in files.items():
        mod = module_of(name)
        allowed = MODULES[mod][1] | {mod}
        for inc in local_includes(text):
            assert module_of(inc) in allowed, f"csrc/io/{name} ({mod}) includes {inc}"


def test_functions_are_called_only_from_above():
    """Every dfc_* function a csrc/io header declares is named only in files of its own module or of a module
    allowed to use it (so no call goes up a layer, even through a local prototype)."""
    files = sources()
    owner = {}
    for name, text in files.items():
        if name.endswith(".h"):
            for fn in re.findall(r"\b(dfc_\w+)\s*\(", without_comments_and_strings(text)):
                owner.setdefault(fn, module_of(name))
    assert {"dfc_weights_add", "dfc_zip_open", "dfc_npz_parse", "dfc_load_weights"} <= set(owner)
    for name, text in files.items():
        mod = module_of(name)
        allowed = MODULES[mod][1] | {mod}
        for fn in set(re.findall(r"\b(dfc_\w+)\s*\(", without_comments_and_strings(text))):
            if fn in owner:
                assert owner[fn] in allowed, f"csrc/io/{name} ({mod}) calls {fn} of {owner[fn]}"
