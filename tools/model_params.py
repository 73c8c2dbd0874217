"""The instance parameters chosen for one trained model, kept beside it: ``<model>.params.json``.

``make evaluate`` chooses the parameters that cut a model's maps into nuclei (threshold, opening, minimum area,
marker settings) on the validation images and writes them here with the model's SHA-256, its validation scores
and the preprocessing of the dataset it was trained on (resize factor, normalisation percentiles, median
nucleus diameter at the net's scale). ``make segment MODEL=x`` reads x's own file, so parameters chosen for one
model are never applied to another.
"""
import math
from pathlib import Path

from cellfcn import files
from cellfcn.errors import InputError

SCHEMA = 1
SUFFIX = ".params.json"


def params_path(model):
    """Where the parameters of ``model`` live: ``<model>.params.json``."""
    return Path(str(model) + SUFFIX)


def dataset_preprocessing(manifest):
    """``scale``, ``percentiles`` and ``nucleus_diameter_px`` of a data_prep dataset, from its manifest dict.

    Raises
    ------
    InputError
        A manifest without percentiles (not data_prep's), or a scale or diameter that is not a positive number.
    """
    params = manifest.get("parameters", {})
    if "percentiles" not in params:
        raise InputError("dataset manifest has no parameters.percentiles (not a data_prep manifest?)")
    # Only the synthetic datasets are made at their images' own size; a real one without its scale is not
    # taken to mean 1.
    if "scale" not in params and manifest.get("kind") != "synthetic":
        raise InputError("dataset manifest has no parameters.scale (rebuild the dataset: make data)")
    out = {"scale": params.get("scale", 1.0), "percentiles": [float(p) for p in params["percentiles"]],
           "nucleus_diameter_px": manifest.get("nucleus_diameter_px")}
    _check_dataset(out, "dataset manifest")
    return out


def _positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_dataset(dataset, where):
    if not _positive(dataset.get("scale")) or dataset["scale"] > 16:
        raise InputError(f"{where}: scale must be a number in (0, 16], got {dataset.get('scale')!r}")
    low, high = dataset.get("percentiles") or (None, None)
    if not (_positive(high) and isinstance(low, (int, float)) and 0 <= low < high <= 100):
        raise InputError(f"{where}: percentiles must be 0 <= low < high <= 100, got {dataset.get('percentiles')!r}")
    if not _positive(dataset.get("nucleus_diameter_px")):
        raise InputError(f"{where}: nucleus_diameter_px must be a positive number, got "
                         f"{dataset.get('nucleus_diameter_px')!r} (rebuild the dataset: make data)")


def write_model_params(model, params, *, val, dataset, chosen_on):
    """Write ``<model>.params.json`` atomically.

    Parameters
    ----------
    model : path
        The ``.caffemodel`` the parameters were chosen for.
    params : dict
        Keyword arguments of :func:`tools.objects.instances_from_maps`.
    val : dict
        Validation scores of the chosen setting (``f1``, ``dsb_score``; None where undefined).
    dataset : dict
        :func:`dataset_preprocessing` of the training dataset.
    chosen_on : str
        What the parameters were chosen on (the validation file).
    """
    _check_dataset(dataset, "dataset")
    files.write_json(params_path(model), {"schema_version": SCHEMA, "model_sha256": files.sha256_file(model),
                                          "params": dict(params), "val": dict(val), "dataset": dict(dataset),
                                          "chosen_on": str(chosen_on)})


def read_model_params(model):
    """The parameters chosen for ``model``, checked to be its own.

    Returns
    -------
    dict
        ``params``, ``val``, ``dataset`` (``scale``, ``percentiles``, ``nucleus_diameter_px``), ``model_sha256``,
        ``chosen_on``.

    Raises
    ------
    InputError
        No parameters file, another schema, a file chosen for another model (other SHA-256) or bad values.
    """
    path = params_path(model)
    if not path.is_file():
        raise InputError(f"no instance parameters chosen for {model}: run `make evaluate` for it, or give "
                         "--threshold/--opening/--min-area")
    record = files.read_json(path, "model parameters (run `make evaluate`)")
    if record.get("schema_version") != SCHEMA:
        raise InputError(f"{path} has schema {record.get('schema_version')}, this version reads {SCHEMA}: run "
                         "`make evaluate` again")
    if record.get("model_sha256") != files.sha256_file(model):
        raise InputError(f"{path} was chosen for another model (SHA-256 {str(record.get('model_sha256'))[:12]}...), "
                         f"not {model}: run `make evaluate` for this model")
    if not isinstance(record.get("params"), dict) or not isinstance(record.get("dataset"), dict):
        raise InputError(f"{path}: no params/dataset objects: run `make evaluate` again")
    _check_dataset(record["dataset"], str(path))
    return record
