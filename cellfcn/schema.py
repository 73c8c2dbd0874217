"""The one loader of the JSON files a stage reads back: schema version, required keys, types and ranges.

A file one stage writes and another reads (``table1.json``, ``objects.json``, ...) is checked as a whole when
it is read, against a :class:`Schema`: a renamed or removed key or row, a value of the wrong type or out of
range, a malformed file or another schema version is one :class:`~cellfcn.errors.InputError` line that names
the file, the first problem and the command that rebuilds it, never a table of dashes or a traceback later.

A schema's ``fields`` is a spec, nested as the JSON is:

- a type (``str``, ``int``, ``dict``...) or a tuple of types: ``isinstance`` (a bool is not a number);
- a dict ``{key: spec}``: an object holding at least these keys (others are allowed);
- a list ``[spec]``: an array whose every item matches ``spec``;
- :class:`Mapping` ``(spec)``: an object with any keys whose every value matches ``spec``;
- a callable ``value -> problem or None``, such as :func:`number`, :func:`integer` and :func:`interval`.

In these files NaN (JSON ``NaN``, which Python's json writes and reads) is an undefined value, ``null`` one
that does not apply (the AUC of a binary baseline): :func:`number` says which a field allows.
"""
import math

from . import files
from .constants import MANIFEST_SCHEMA, METRICS, TABLE1_SCHEMA
from .errors import CellfcnError, InputError


class Schema:
    """What a JSON file must hold.

    Parameters
    ----------
    what : str
        Its name in messages ("Table 1").
    version : int
        The ``schema_version`` this code reads.
    rebuild : str
        The command that writes the file ("make evaluate").
    fields : dict
        Spec of the top-level object (see the module docstring).
    check : callable, optional
        ``obj -> problem or None``: what the fields alone cannot say (rows that must be there).
    remedy : str, optional
        What to do instead of rebuilding, for a file no command rebuilds (default: run ``rebuild`` again).
    """

    def __init__(self, what, version, rebuild, fields, check=None, remedy=None):
        self.what, self.version, self.rebuild, self.fields, self.check = what, version, rebuild, fields, check
        self.remedy = remedy or f"run `{rebuild}` again to rebuild it"


class _Mismatch(Exception):
    pass


def number(lo=-math.inf, hi=math.inf, nan=False, null=False):
    """Spec of a number in [lo, hi]; ``nan`` allows NaN (undefined), ``null`` allows None (not applicable)."""
    def check(value):
        if value is None:
            return None if null else "must be a number, not null"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, not {value!r}"
        if value != value:
            return None if nan else "must be a number, not NaN"
        if not lo <= value <= hi:
            return f"must lie in [{lo:g}, {hi:g}], not {value:g}"
        return None
    return check


def integer(lo=0, null=False):
    """Spec of an integer >= lo (None allowed with ``null``)."""
    def check(value):
        if value is None and null:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, not {value!r}"
        return None if value >= lo else f"must be at least {lo}, not {value}"
    return check


def positive(hi=math.inf):
    """Spec of a finite number in (0, hi]."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be a positive number, not {value!r}"
        return None if 0 < value <= hi else f"must lie in (0, {hi:g}], not {value:g}"
    return check


def ordered_pair(lo, hi):
    """Spec of ``[low, high]`` with ``lo <= low < high <= hi`` (percentiles, ranges)."""
    def check(value):
        if not isinstance(value, list) or len(value) != 2 or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            return f"must be [low, high], not {value!r}"
        return None if lo <= value[0] < value[1] <= hi else f"must be [low, high] in [{lo:g}, {hi:g}], low < high, " \
                                                              f"not {value!r}"
    return check


def interval(lo, hi):
    """Spec of ``[low, high]``, each a number in [lo, hi] or NaN (undefined)."""
    bound = number(lo, hi, nan=True)

    def check(value):
        if not isinstance(value, list) or len(value) != 2:
            return f"must be [low, high], not {value!r}"
        return bound(value[0]) or bound(value[1])
    return check


class Mapping:
    """Spec of an object with any keys whose every value matches ``spec``."""

    def __init__(self, spec):
        self.spec = spec


def _check(value, spec, where):
    """Raise :class:`_Mismatch` naming ``where`` when ``value`` does not match ``spec``."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise _Mismatch(f"{where} must be an object, not {type(value).__name__}")
        for key, sub in spec.items():
            if key not in value:
                raise _Mismatch(f"{where}.{key} is missing")
            _check(value[key], sub, f"{where}.{key}")
    elif isinstance(spec, list):
        if not isinstance(value, list):
            raise _Mismatch(f"{where} must be an array, not {type(value).__name__}")
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]")
    elif isinstance(spec, Mapping):
        if not isinstance(value, dict):
            raise _Mismatch(f"{where} must be an object, not {type(value).__name__}")
        for key, item in value.items():
            _check(item, spec.spec, f"{where}.{key}")
    elif isinstance(spec, (type, tuple)):
        types = spec if isinstance(spec, tuple) else (spec,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise _Mismatch(f"{where} must be {' or '.join(t.__name__ for t in types)}, not {type(value).__name__}")
    else:
        problem = spec(value)
        if problem:
            raise _Mismatch(f"{where} {problem}")


def validate(obj, schema):
    """The first problem of ``obj`` against ``schema`` (one phrase), or None when it matches."""
    if not isinstance(obj, dict):
        return f"not a JSON object but {type(obj).__name__}"
    if obj.get("schema_version") != schema.version:
        return f"has schema {obj.get('schema_version')}, this version reads {schema.version}"
    try:
        _check(obj, schema.fields, "")
    except _Mismatch as err:
        return str(err).lstrip(".")
    return schema.check(obj) if schema.check else None


def load(path, schema):
    """Read the JSON file ``path`` and check it against ``schema``.

    Returns
    -------
    dict
        The file's content.

    Raises
    ------
    InputError
        Missing, unreadable or malformed file, another schema version, or content that does not match; the
        one-line message names the file, the problem and the command that rebuilds it.
    """
    try:
        obj = files.read_json(path, f"{schema.what} (run `{schema.rebuild}`)")
    except CellfcnError as err:
        raise InputError(str(err)) from None
    problem = validate(obj, schema)
    if problem:
        raise InputError(f"{schema.what} {path}: {problem}: {schema.remedy}")
    return obj


def require(obj, spec, where):
    """Check an object about to be written, or a part of one already read, against a :class:`Schema` or a
    fields spec; return it.

    Raises
    ------
    InputError
        The first problem, naming ``where``.
    """
    if isinstance(spec, Schema):
        problem = validate(obj, spec)
    else:
        try:
            _check(obj, spec, "")
            problem = None
        except _Mismatch as err:
            problem = str(err).lstrip(".")
    if problem:
        raise InputError(f"{where}: {problem}")
    return obj


# ------------------------------------------------------------------------------------------- table1.json
# The rows figures and report rely on, by (model, split, protocol): tools.evaluate writes exactly these.
TABLE1_ROWS = (("before", "real_test", "test-optimal"), ("before", "real_test", "val-threshold"),
               ("after", "real_test", "test-optimal"), ("after", "real_test", "val-threshold"),
               ("otsu", "real_test", "otsu-per-image"), ("before", "synthetic_test", "test-optimal"))
_SCORES = {key: number(-1 if key == "mcc" else 0, 1, nan=True) for key in METRICS}
_PAPER_ROW = {"name": str, "model": str, "split": str, "protocol": str,
              "threshold": number(0, 1, nan=True, null=True), **_SCORES, "auc": number(0, 1, nan=True, null=True)}
_ROW = {**_PAPER_ROW, **{k: integer(0, null=True) for k in ("tp", "fp", "tn", "fn")},
        "ci": Mapping(interval(-1, 1))}


def _table1_rows(table):
    keys = [(r["model"], r["split"], r["protocol"]) for r in table["rows"]]
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate:
        return f"rows holds model={duplicate[0]}, split={duplicate[1]}, protocol={duplicate[2]} twice"
    missing = next((k for k in TABLE1_ROWS if k not in keys), None)
    if missing:
        return f"rows has no row for model={missing[0]}, split={missing[1]}, protocol={missing[2]}"
    return None


TABLE1 = Schema("Table 1", TABLE1_SCHEMA, "make evaluate",
                {"inputs_sha256": str, "rows": [_ROW], "paper": [_PAPER_ROW],
                 "bootstrap": {"replicates": integer(1), "unit": str}},
                check=_table1_rows)


# ------------------------------------------------------------------------------ dataset folder manifest.json
def _dataset_rules(manifest):
    # Only the synthetic datasets are made at their images' own size; a real one without its scale is not
    # taken to mean 1.
    scale = manifest["parameters"].get("scale")
    if scale is None:
        return None if manifest["kind"] == "synthetic" else "parameters.scale is missing (a real dataset's scale " \
                                                               "is never taken to be 1)"
    problem = positive(16)(scale)
    return f"parameters.scale {problem}" if problem else None


DATASET = Schema("dataset manifest", MANIFEST_SCHEMA, "make data", {
    "kind": str, "command": str, "patch_size": integer(1), "seed": integer(0), "formats": [str],
    "splits": Mapping({"n": integer(0)}), "parameters": {"percentiles": ordered_pair(0, 100)},
    "nucleus_diameter_px": number(0, null=True), "files": Mapping(str), "build_key": str}, check=_dataset_rules)


def load_dataset(path):
    """A data_prep dataset's ``manifest.json``, checked (:data:`DATASET`)."""
    return load(path, DATASET)
