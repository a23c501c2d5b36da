"""The package's build configuration: pyproject.toml gives setuptools nothing deprecated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_has_no_deprecated_setuptools_configuration(monkeypatch):
    # The build isolates itself with the newest setuptools; a deprecated field (e.g. project.license as a TOML
    # table, unsupported after 2027-02-18) warns there long before it fails.
    setuptools = pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution
    from setuptools.warnings import SetuptoolsDeprecationWarning

    assert tuple(int(v) for v in setuptools.__version__.split(".")[:2]) >= (77, 0), (
        "the test extra requires setuptools>=77 (the version pyproject.toml's build-system asks for)"
    )
    monkeypatch.chdir(ROOT)  # readme and license-files are relative to the project
    with warnings.catch_warnings():
        warnings.simplefilter("error", SetuptoolsDeprecationWarning)
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
    assert "LICENSE" in dist.metadata.license_files


def test_no_build_or_test_output_is_tracked():
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    bad = [
        f
        for f in tracked.stdout.splitlines()
        if f.endswith((".whl", ".so", ".o", ".pyc", ".egg-info")) or f.startswith(("build/", "dist/"))
    ]
    assert bad == []


def test_the_wheel_gets_every_subpackage_the_typing_marker_and_the_demo_models(monkeypatch):
    """pyproject.toml's package discovery finds every folder of diffice/ that holds modules (the subpackages of
    issue 15), and its package data ships py.typed (PEP 561) and the bundled demo models."""
    pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "diffice").rglob("*.py")}
    assert folders <= set(dist.packages), f"not in the wheel: {sorted(folders - set(dist.packages))}"
    assert "diffice.demo_models" in dist.packages
    assert (ROOT / "diffice" / "py.typed").is_file() and "py.typed" in dist.package_data["diffice"]
    assert {"*.safetensors", "*.json"} <= set(dist.package_data["diffice.demo_models"])


def test_the_sdist_carries_every_file_its_build_needs():
    """MANIFEST.in selects every C and CUDA source and header under csrc/ and the PEP 517 backend (pyproject.toml's
    backend-path): setuptools' defaults leave out the headers, the .cu files and build_tools/, and an sdist without
    them does not build (`pip install diffice-0.1.0.tar.gz`)."""
    pytest.importorskip("setuptools")
    from setuptools.command.egg_info import FileList

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    backend_path = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["backend-path"]
    needed = sorted(
        p.relative_to(ROOT).as_posix()
        for folder in ["csrc", *backend_path]
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert any(f.endswith(".h") for f in needed) and any(f.endswith(".cu") for f in needed)
    manifest = ROOT / "MANIFEST.in"
    assert manifest.is_file(), "no MANIFEST.in: the sdist gets only setuptools' defaults"
    selected = FileList()
    selected.allfiles = list(needed)
    for line in manifest.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            selected.process_template_line(line)
    assert sorted(set(needed) - set(selected.files)) == []


def test_the_test_extra_has_what_an_in_place_build_needs():
    """README, "Developing diffice": after `pip install -e ".[test]"`, `python setup.py build_ext --inplace` builds in
    that environment, not in pip's isolated one: every build requirement (setuptools, numpy, the oneDNN headers
    wheel at the version build-system pins) must be in the test extra or the dependencies, or setup.py stops with
    "oneDNN headers not found"."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    from packaging.requirements import Requirement  # pytest's own dependency

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    installed = [
        Requirement(r) for r in project["project"]["dependencies"] + project["project"]["optional-dependencies"]["test"]
    ]
    for requirement in map(Requirement, project["build-system"]["requires"]):
        if requirement.name == "wheel":  # setup.py itself needs no wheel
            continue
        candidates = [r for r in installed if r.name == requirement.name]
        assert candidates, f"{requirement} (a build requirement) is in neither the dependencies nor the test extra"
        if "==" in str(requirement.specifier):  # the headers must be those of the library the extension links
            assert any(r.specifier == requirement.specifier for r in candidates), requirement


@pytest.mark.parametrize("dnnl_root", [None, "/opt/dnnl"], ids=["wheel", "DNNL_ROOT"])
def test_the_extension_s_runpath_names_no_build_environment(dnnl_root):
    """_C's RUNPATH is $ORIGIN/../../.. (the installed wheel's libdnnl; diffice/_native.py preloads it anyway), plus
    DNNL_ROOT's lib/ where that is set; never the oneDNN wheel's folder as found at build time, which for
    `pip install .` is pip's temporary build environment (/tmp/pip-build-env-*): gone after the build, a path any
    local user could create again with a library of theirs in it."""
    code = (
        "import json, runpy, setuptools\n"
        "captured = {}\n"
        "setuptools.setup = lambda **kw: captured.update(kw)\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
        "print(json.dumps(captured['ext_modules'][0].runtime_library_dirs))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DNNL_ROOT"}
    if dnnl_root:
        env["DNNL_ROOT"] = dnnl_root
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0 and "oneDNN headers not found" in done.stderr:
        pytest.skip("the oneDNN headers wheel is not installed here")
    assert done.returncode == 0, done.stderr
    runpath = json.loads(done.stdout.strip().splitlines()[-1])
    assert runpath == ["$ORIGIN/../../.."] + ([f"{dnnl_root}/lib"] if dnnl_root else [])


def test_a_missing_system_header_stops_the_build_with_what_to_install(tmp_path):
    """setup.py checks the system headers the C core includes (zlib.h: build-essential does not bring it) before
    compiling, and names what provides a missing one, instead of gcc's error amid pip's log."""
    code = (
        "import runpy, sys, setuptools\n"
        "from pathlib import Path\n"
        "from distutils.ccompiler import new_compiler  # setuptools' distutils, as build_ext's compiler is\n"
        "from distutils.sysconfig import customize_compiler\n"
        "setuptools.setup = lambda **kw: None\n"
        "ns = runpy.run_path('setup.py')\n"
        "compiler = new_compiler()\n"
        "customize_compiler(compiler)\n"
        "headers = {**ns['SYSTEM_HEADERS'], 'diffice_no_such_header.h': 'the no-such-header package'}\n"
        "ns['_require_headers'](compiler, Path(sys.argv[1]), headers)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DNNL_ROOT"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if "oneDNN headers not found" in done.stderr:
        pytest.skip("the oneDNN headers wheel is not installed here")
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()
    assert "diffice_no_such_header.h: install the no-such-header package" in message[-1]
    assert not any(line.strip().startswith("zlib.h:") for line in message), "zlib.h is here (the C core built)"


def test_a_build_without_the_cuda_plugin_drops_an_earlier_build_s_plugin(tmp_path):
    """`DIFFICE_CUDA=0 pip install .` after a `pip install .` with nvcc: pip builds in the clone's build/ again,
    where the earlier CUDA plugin still lies beside _C; it must not go into the new wheel (diffice info would say
    "cuda: built", and the plugin was built from other sources than the _C beside it)."""
    code = (
        "import runpy, sys, setuptools\n"
        "from pathlib import Path\n"
        "from setuptools.command.build_ext import build_ext\n"
        "setuptools.setup = lambda **kw: None\n"
        "ns = runpy.run_path('setup.py')\n"
        "cls = ns['BuildExtWithCuda']\n"
        "build_ext.build_extensions = lambda self: None  # the compilers' part: not this test's\n"
        "cls.build_extensions.__globals__['_require_headers'] = lambda *args: None\n"
        "cls.build_extensions.__globals__['cuda_build'].compile_emulated = lambda *args, **kw: []\n"
        "dist = setuptools.Distribution({'name': 'diffice', 'ext_modules': [ns['_extension']()]})\n"
        "cmd = cls(dist)\n"
        "cmd.build_lib, cmd.build_temp = sys.argv[1], sys.argv[1] + '/temp'\n"
        "cmd.ensure_finalized()\n"
        "plugin = Path(cmd.get_ext_fullpath('diffice._C')).parent / 'libdiffice_cuda.so'\n"
        "plugin.parent.mkdir(parents=True, exist_ok=True)\n"
        "plugin.write_text('an earlier build')\n"
        "cmd.build_extensions()\n"
        "print('plugin left:', plugin.exists())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DNNL_ROOT"}
    env["DIFFICE_CUDA"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if "oneDNN headers not found" in done.stderr:
        pytest.skip("the oneDNN headers wheel is not installed here")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "plugin left: False"


@pytest.mark.parametrize(
    "given, expected",
    [
        ({}, {"GOMP_SPINCOUNT": "1000", "OMP_WAIT_POLICY": None}),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": "PASSIVE"}),
        ({"GOMP_SPINCOUNT": "50"}, {"GOMP_SPINCOUNT": "50", "OMP_WAIT_POLICY": None}),
    ],
    ids=["default", "wait-policy-kept", "spin-count-kept"],
)
def test_import_sets_a_short_openmp_spin_unless_the_user_chose(given, expected):
    """libgomp reads its wait settings once, when it loads: `import diffice` sets a short spin before loading the
    C core (README, "Threads"), and leaves a setting of the user's alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = (
        "import json, os, diffice; "
        "print(json.dumps({k: os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}))"
    )
    done = subprocess.run([sys.executable, "-c", code], env={**env, **given}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_the_package_namespace_is_its_api():
    """`dir(diffice)` (a notebook's tab completion) shows the public API and the subpackages, no stray imports."""
    import types

    import diffice

    public = {name for name in dir(diffice) if not name.startswith("_")}
    modules = {name for name in public if isinstance(getattr(diffice, name), types.ModuleType)}
    assert public - modules == {name for name in diffice.__all__ if not name.startswith("_")} - modules


def test_dnnl_root_at_import_time_comes_before_the_wheels_onednn(monkeypatch, tmp_path):
    from diffice import _native

    monkeypatch.delenv("DNNL_ROOT", raising=False)
    plain = _native.onednn_candidates()
    assert plain and all(p.endswith("libdnnl.so.3") for p in plain)
    monkeypatch.setenv("DNNL_ROOT", str(tmp_path))  # the oneDNN a DNNL_ROOT build linked against: loaded first
    assert _native.onednn_candidates() == [str(tmp_path / "lib" / "libdnnl.so.3"), *plain]
