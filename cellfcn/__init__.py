"""cellfcn's foundation: what every stage shares and nothing of the project's own is imported into.

The packages depend on each other in one direction only::

    cellfcn -> simcep_py -> data_prep -> prototxt, solvers -> tools -> bench

``tools`` holds one command module per make target, named after it (``make evaluate`` runs
:mod:`tools.evaluate`, ``make segment`` :mod:`tools.segment`...), and the libraries that need Caffe or the
net generator (:mod:`tools.infer`, :mod:`tools.score`, :mod:`tools.model_params`...). Here:

- :mod:`cellfcn.errors`: the one error base class every command line turns into ``error: ...``;
- :mod:`cellfcn.files`: atomic file and folder writes, hashes, stale temporaries;
- :mod:`cellfcn.constants`: names and numbers more than one stage relies on;
- :mod:`cellfcn.caffe_env`: the Caffe build (binary, pycaffe), Datum encoding, nets with checked weights;
- :mod:`cellfcn.cli`: the wrapper that gives every command the same exit statuses;
- :mod:`cellfcn.machine`: the machine a run is on (CPU model, cores) and the thread variables a run pins;
- :mod:`cellfcn.schema`: the one loader of the JSON files stages read back (schema version, keys, ranges);

and the array libraries every stage uses (numpy in, numpy out; no Caffe):

- :mod:`cellfcn.images`: images and masks from TIFF/PNG, instance labels from masks;
- :mod:`cellfcn.metrics`: pixel scores at every threshold, MCC-optimal threshold, ROC, PR;
- :mod:`cellfcn.objects`: nuclei from probability maps (watershed), matching, counting scores, Otsu;
- :mod:`cellfcn.scale`: nucleus diameters and the resize factor for another magnification;
- :mod:`cellfcn.parse_log`: Caffe training logs as tables;
- :mod:`cellfcn.plotting`, :mod:`cellfcn.pictures`: figures, and images with their nuclei outlined.
"""
