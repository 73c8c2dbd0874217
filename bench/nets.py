"""The Caffe nets the benchmarks run, built from ``prototxt/net.py`` so they are the project's FCRN-A."""
import numpy as np

from cellfcn import caffe_env
from prototxt import net


def train_prototxt(batch, size):
    """Text of the training net fed by Input layers: ``data`` and ``label`` (batch, 1, size, size).

    The same body and SoftmaxWithLoss as the project's train nets, minus the data layers, so that pycaffe
    and ``caffe time`` measure the network and not HDF5/LMDB reading.
    """
    caffe = caffe_env.import_caffe()
    L = caffe.layers
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, 1, size, size]))
    n.label = L.Input(shape=dict(dim=[batch, 1, size, size]))
    n.loss = L.SoftmaxWithLoss(net.fcrn_a(n, n.data), n.label)
    proto = n.to_proto()
    proto.name = f"fcrn_a_bench_b{batch}_{size}"
    return str(proto)


def solver_prototxt(net_path, seed, lr=1e-4):
    """SGD solver text (momentum 0.9, weight decay 5e-4, as the project's solvers) that never snapshots."""
    return (f'net: "{net_path}"\nbase_lr: {lr}\nlr_policy: "fixed"\nmomentum: 0.9\nweight_decay: 0.0005\n'
            f"max_iter: 100000000\ndisplay: 0\nsnapshot: 0\nrandom_seed: {seed}\nsolver_mode: CPU\n")


def batch_arrays(batch, size, seed):
    """A deterministic batch: images uniform in [0,1], labels 0/1 with about 30% cells (float32)."""
    rng = np.random.default_rng(seed)
    data = rng.random((batch, 1, size, size), dtype=np.float32)
    label = (rng.random((batch, 1, size, size)) < 0.3).astype(np.float32)
    return data, label
