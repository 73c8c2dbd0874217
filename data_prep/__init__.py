"""Turn synthetic (simcep_py) and real annotated microscopy images into the datasets Caffe's data layers read.

``python -m data_prep synthetic|mnfinder|folder --out DIR ...`` writes one dataset folder (HDF5 and/or LMDB
patches, whole-image files for the real val/test splits, ``manifest.json``); see ``python -m data_prep -h``.

Bad input raises :class:`cellfcn.errors.InputError`; every failure is a :class:`cellfcn.errors.CellfcnError`.
"""
