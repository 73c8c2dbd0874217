"""tools/build_caffe.sh on today's machines: CMake 4 configures Caffe, and a failed step says why.

The CMake 4 is the one `pip install cmake` gives, installed once into ~/.cache/cellfcn, apart from the
system's cmake and the venv; only these tests put it first on PATH.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "tools" / "build_caffe.sh"
ERRORS = ROOT / "tools" / "build_errors.sh"
CMAKE4 = "cmake==4.4.5"
# The tree `make caffe` fetched and patched; without it build_caffe.sh fetches the source itself.
FETCHED_SRC = ROOT / ".caffe-build" / "cpu" / "src"


@pytest.fixture(scope="session")
def cmake4_path():
    """PATH with PyPI's CMake 4 first (installed once; the wheel's own binary, not its Python wrapper)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cellfcn" / CMAKE4.replace("==", "-")
    if not (cache / "cmake" / "data" / "bin" / "cmake").exists():
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--target", str(tmp), CMAKE4], check=True)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    return f"{cache / 'cmake' / 'data' / 'bin'}{os.pathsep}{os.environ['PATH']}"


def _configure(tmp_path, *args, env=None):
    """tools/build_caffe.sh --configure-only in tmp_path, with env's variables over the current ones."""
    cmd = [str(BUILD), "--prefix", str(tmp_path / "prefix"), "--python", sys.executable,
           "--work", str(tmp_path / "work"), "--configure-only", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def cmake4_configure(tmp_path_factory, cmake4_path):
    """One configure of Caffe with CMake 4, of the tree `make caffe` fetched or else a fresh fetch."""
    root = tmp_path_factory.mktemp("cmake4")
    src = ["--src", str(FETCHED_SRC)] if (FETCHED_SRC / "CMakeLists.txt").is_file() else []
    return root, _configure(root, *src, env={"PATH": cmake4_path})


def test_cmake4_from_pypi_configures_caffe(cmake4_configure):
    root, run = cmake4_configure
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"Configured Caffe in .* with cmake version 4\.", run.stdout)
    cache = (root / "work" / "build" / "CMakeCache.txt").read_text()
    assert re.search(r"^CMAKE_COMMAND:INTERNAL=.*/cmake/data/bin/cmake$", cache, re.M)
    assert "CPU_ONLY:BOOL=ON" in cache


def test_failed_configure_prints_cmakes_reason(tmp_path, cmake4_path, cmake4_configure):
    # Undo the fix: CMake 4 then refuses Caffe's cmake_minimum_required(VERSION 2.8.7).
    source = cmake4_configure[0] / "work" / "src"
    run = _configure(tmp_path, "--src", str(source), "--extra-cmake", "-DCMAKE_POLICY_VERSION_MINIMUM=",
                     env={"PATH": cmake4_path})
    assert run.returncode == 1
    assert "cmake configure failed; full log:" in run.stderr
    assert "CMake Error at CMakeLists.txt:1 (cmake_minimum_required):" in run.stderr
    assert "Compatibility with CMake < 3.5 has been removed from CMake." in run.stderr


def test_compile_errors_are_printed_without_the_warnings(tmp_path):
    source = tmp_path / "broken.cpp"
    source.write_text("int main() {\n  int unused = 0;\n  return undeclared_name;\n}\n")
    log = tmp_path / "build.log"
    with log.open("w") as out:
        out.write("[ 42%] Building CXX object broken.cpp.o\n")
        compiled = subprocess.run(["g++", "-Wall", "-fdiagnostics-color=always", "-c", str(source), "-o",
                                   str(tmp_path / "broken.o")], stdout=out, stderr=subprocess.STDOUT)
        out.write("make[2]: *** [broken.cpp.o] Error 1\n")
    assert compiled.returncode != 0
    shown = subprocess.run([str(ERRORS), str(log)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"broken\.cpp:3:\d+: error: .undeclared_name. was not declared", shown)
    assert "return undeclared_name;" in shown  # gcc's source line under the error
    assert "unused" not in shown and "\x1b[" not in shown


def test_every_failed_source_is_named(tmp_path):
    # Nothing listens on port 9: the mirror, the archive stand-in and the git host all refuse at once.
    sources = tmp_path / "refused.sources"
    sources.write_text((ROOT / "tools" / "caffe-src-archive.sources").read_text()
                       .replace("http://archive.debian.org/debian", "http://127.0.0.1:9/debian"))
    run = _configure(tmp_path, env={"CAFFE_SRC_SOURCES": str(sources),
                                    "CAFFE_GIT_URL": "http://127.0.0.1:9/caffe.git"})
    assert run.returncode == 1
    tried = run.stderr.split("tried, in order:")[1].splitlines()
    assert tried[1].startswith("  - Debian source package caffe 1.0.0+git20180821.99bd997-8 from "
                               "http://127.0.0.1:9/debian (bullseye): ")
    assert "Connection refused" in tried[1]
    assert tried[2].startswith("  - git clone of http://127.0.0.1:9/caffe.git at 99bd997: fatal:")
    assert "CAFFE_SRC=" in run.stderr
    assert not (tmp_path / "work" / "src").exists()


def _entries(path):
    fields = dict(line.split(":", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value.strip() for key, value in fields.items()}


def test_archive_entry_is_the_main_entry_on_debians_archive(tmp_path):
    main = _entries(ROOT / "tools" / "caffe-src.sources")
    archive = _entries(ROOT / "tools" / "caffe-src-archive.sources")
    assert archive.pop("URIs") == "http://archive.debian.org/debian"
    assert main.pop("URIs") == "http://deb.debian.org/debian"
    assert archive == main  # the same suite, component and signing keyring
    assert Path(archive["Signed-By"]).is_file()
    # apt itself parses the entry and names the signed index and the Sources list it would fetch.
    lists = tmp_path / "lists"
    (lists / "partial").mkdir(parents=True)
    uris = subprocess.run(["apt-get", "-o", f"Dir::Etc::SourceList={ROOT / 'tools' / 'caffe-src-archive.sources'}",
                           "-o", "Dir::Etc::SourceParts=/dev/null", "-o", f"Dir::State::Lists={lists}",
                           "--print-uris", "update"], capture_output=True, text=True, check=True).stdout
    assert "'http://archive.debian.org/debian/dists/bullseye/InRelease'" in uris
    assert "'http://archive.debian.org/debian/dists/bullseye/main/source/Sources.xz'" in uris
