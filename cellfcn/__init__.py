"""cellfcn's foundation: what every stage shares and nothing of the project's own is imported into.

The packages depend on each other in one direction only::

    cellfcn -> simcep_py -> data_prep -> prototxt, solvers -> tools (train -> infer -> evaluate -> report) -> bench

- :mod:`cellfcn.errors`: the one error base class every command line turns into ``error: ...``;
- :mod:`cellfcn.files`: atomic file and folder writes, hashes, stale temporaries;
- :mod:`cellfcn.constants`: names and numbers more than one stage relies on;
- :mod:`cellfcn.caffe_env`: the Caffe build (binary, pycaffe), Datum encoding, nets with checked weights;
- :mod:`cellfcn.cli`: the wrapper that gives every command the same exit statuses;
- :mod:`cellfcn.machine`: the machine a run is on (CPU model, cores) and the thread variables a run pins;
- :mod:`cellfcn.schema`: the one loader of the JSON files stages read back (schema version, keys, ranges).
"""
