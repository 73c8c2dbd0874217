"""The instance parameters chosen for one trained model, kept beside it: ``<model>.params.json``.

``make evaluate`` chooses the parameters that cut a model's maps into nuclei (threshold, opening, minimum area,
marker settings, the extent threshold the nuclei grow to, the working diameter each image is resized to:
:mod:`cellfcn.scale`) on the whole training and validation images and writes them here with the model's
SHA-256, its
validation scores and the preprocessing of the dataset it was trained on (resize factor, normalisation
percentiles, median nucleus diameter at the net's scale). ``make segment MODEL=x`` reads x's own file, so
parameters chosen for one model are never applied to another.
"""
from pathlib import Path

from cellfcn import files, schema
from cellfcn.errors import InputError

SCHEMA = 2
SUFFIX = ".params.json"
#: The preprocessing a model was trained with, as segmentation needs it.
DATASET = {"scale": schema.positive(16), "percentiles": schema.ordered_pair(0, 100),
           "nucleus_diameter_px": schema.positive()}
PARAMS = schema.Schema("instance parameters", SCHEMA, "make evaluate",
                       {"model_sha256": str, "params": dict, "val": dict, "dataset": DATASET, "chosen_on": str,
                        "working_diameter_px": schema.number(0, null=True)})


def params_path(model):
    """Where the parameters of ``model`` live: ``<model>.params.json``."""
    return Path(str(model) + SUFFIX)


def dataset_preprocessing(manifest, where="dataset manifest"):
    """``scale``, ``percentiles`` and ``nucleus_diameter_px`` of a data_prep dataset, from its manifest
    (:func:`cellfcn.schema.load_dataset`; a synthetic dataset has no scale: its images' own size, 1).

    Raises
    ------
    InputError
        A manifest that is not data_prep's (:data:`cellfcn.schema.DATASET`), or a dataset without a measured
        nucleus diameter (no nucleus in its training images).
    """
    where = f"{where} (rebuild it: make data)"
    schema.require(manifest, schema.DATASET, where)
    out = {"scale": manifest["parameters"].get("scale", 1.0), "percentiles": manifest["parameters"]["percentiles"],
           "nucleus_diameter_px": manifest["nucleus_diameter_px"]}
    schema.require(out, DATASET, where)
    return {**out, "percentiles": [float(p) for p in out["percentiles"]]}


def read_dataset_preprocessing(path):
    """:func:`dataset_preprocessing` of the dataset manifest at ``path``, read by
    :func:`cellfcn.schema.load_dataset`; every problem names the file."""
    return dataset_preprocessing(schema.load_dataset(path), f"dataset manifest {path}")


def write_model_params(model, params, *, val, dataset, chosen_on, working_diameter_px=None):
    """Write ``<model>.params.json`` atomically.

    Parameters
    ----------
    model : path
        The ``.caffemodel`` the parameters were chosen for.
    params : dict
        Keyword arguments of :func:`cellfcn.objects.instances_from_maps`.
    val : dict
        Validation scores of the chosen setting (``f1``, ``dsb_score``; None where undefined).
    dataset : dict
        :func:`dataset_preprocessing` of the training dataset.
    chosen_on : str
        What the parameters were chosen on (the whole-image files).
    working_diameter_px : float, optional
        The nucleus diameter (pixels at the net's scale) each image is resized to before the cut
        (:mod:`cellfcn.scale`); None: the images stay at the run's factor.
    """
    record = {"schema_version": SCHEMA, "model_sha256": files.sha256_file(model), "params": dict(params),
              "val": dict(val), "dataset": dict(dataset), "chosen_on": str(chosen_on),
              "working_diameter_px": None if working_diameter_px is None else float(working_diameter_px)}
    files.write_json(params_path(model), schema.require(record, PARAMS, "instance parameters"))


def read_model_params(model):
    """The parameters chosen for ``model``, checked to be its own.

    Returns
    -------
    dict
        ``params``, ``val``, ``dataset`` (``scale``, ``percentiles``, ``nucleus_diameter_px``), ``model_sha256``,
        ``chosen_on``, ``working_diameter_px``.

    Raises
    ------
    InputError
        No parameters file, another schema, a file chosen for another model (other SHA-256) or bad values.
    """
    path = params_path(model)
    if not path.is_file():
        raise InputError(f"no instance parameters chosen for {model}: run `make evaluate` for it, or give "
                         "--threshold/--opening/--min-area")
    record = schema.load(path, PARAMS)
    if record["model_sha256"] != files.sha256_file(model):
        raise InputError(f"{path} was chosen for another model (SHA-256 {record['model_sha256'][:12]}...), "
                         f"not {model}: run `make evaluate` for this model")
    return record
