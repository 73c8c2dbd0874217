"""Writes that either complete or leave the previous output as it was: no half-written file, no temp litter.

Every output goes to a temporary name beside its final path, ``.<name>.tmp-<pid>``, and is renamed over the
final path only when complete; a failure removes the temporary. A process killed outright (``kill -9``, a
crash inside a C library) cannot clean up, so the next write to the same path removes the temporaries of
processes that no longer run.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from .errors import CellfcnError


def sha256_file(path, block=1 << 20):
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def digest(*parts):
    """SHA-256 hex digest of JSON-serialisable parts (sorted keys): the identity of a stage's inputs."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def code_digest(*modules):
    """SHA-256 over the Python sources of imported packages (all their files) and modules: a code change makes
    old outputs stale."""
    h = hashlib.sha256()
    for module in modules:
        folder = Path(module.__file__).parent
        for path in sorted(folder.rglob("*.py")) if hasattr(module, "__path__") else [Path(module.__file__)]:
            h.update(path.relative_to(folder.parent).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _temp_names(path):
    return re.compile(rf"^\.{re.escape(path.name)}\.(?:tmp|old)-(\d+)(?:\.|$)")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(path):
    """Remove temporaries of ``path`` left by processes that no longer run; return how many were removed."""
    path = Path(path).absolute()
    if not path.parent.is_dir():
        return 0
    pattern, removed = _temp_names(path), 0
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def check_writable(path, what="output"):
    """Fail before any work when ``path`` could not be written.

    Raises
    ------
    CellfcnError
        ``path`` lies below a file, below a folder this process may not write to, or is a folder where a
        file is expected (``what`` names it in the message).
    """
    path = Path(path).absolute()
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CellfcnError(f"cannot write the {what} {path}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CellfcnError(f"cannot write the {what} {path}: {ancestor} is not writable")


def _write_error(path, err):
    reason = err.strerror or str(err)
    return CellfcnError(f"cannot write {path}: {reason}; the previous version (if any) is unchanged")


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block completes.

    The temporary keeps ``path``'s suffix, so writers that choose a format by suffix still work.

    Raises
    ------
    CellfcnError
        The folder cannot be made or the write fails (full disk, read-only folder, ``path`` is a folder).
    """
    path = Path(path).absolute()
    if path.is_dir():
        raise CellfcnError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(path, err) from None
    clean_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise _write_error(path, err) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode())


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def read_json(path, what="file"):
    """Parse a JSON file; a missing or malformed one is a :class:`CellfcnError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CellfcnError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as err:
        raise CellfcnError(f"cannot read {what} {path}: {err}") from None


@contextlib.contextmanager
def staged_folder(out):
    """Yield a fresh temporary folder beside ``out``; on success it replaces ``out`` as a whole.

    On any error (or Ctrl-C) the temporary folder is removed, as are parent folders this call created, and
    ``out`` keeps its previous content.
    """
    out = Path(out).absolute()
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        try:
            if out.exists() and not out.is_dir():
                raise CellfcnError(f"cannot write the folder {out}: a file of that name exists")
            out.parent.mkdir(parents=True, exist_ok=True)
            clean_stale(out)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as err:
            raise _write_error(out, err) from None
        try:
            yield tmp
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
        except OSError as err:
            raise _write_error(out, err) from None
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
