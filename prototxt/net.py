"""Write the FCRN-A segmentation nets (Xie, Noble & Zisserman 2015, two classes) with ``caffe.NetSpec``.

Layout (all kernels 3x3, 'same' padding, 1,365,282 learnable parameters, 38x38 receptive field at conv4):
conv1 32 - ReLU - pool | conv2 64 - ReLU - pool | conv3 128 - ReLU - pool | conv4 512 - ReLU |
3 x (bilinear x2 upsampling - ReLU - conv 128/64/32) | ReLU | 1x1 conv to 2 scores.
The upsampling is a fixed bilinear Deconvolution (kernel 4, stride 2, pad 1, one group per channel,
lr_mult 0), as in FCRN-A. The committed prototxt/ files are this script's output (``make prototxt``).

``VARIANTS`` holds FCRN-A and the changes the report suggests in section 7.3 (``make experiments``): ``k5``
(5x5 kernels: a 68x68 receptive field), ``pool2`` (two poolings and two upsamplings: less spatial
information lost, a 26x26 receptive field) and ``wide`` (every layer twice as wide: 4x the parameters). A
trained model names its variant: its net is called ``<variant>_<stage>_train``.

``contour`` is FCRN-A with three classes (background, nucleus interior, nucleus contour; ``data_prep.targets``)
for counting: the contour class separates touching nuclei, which the two-class target paints as one region. It
trains on the datasets' ``<split>_3class`` files with the same loss (``SoftmaxWithLoss``) and schedule.
``contour_skip`` is ``contour`` with U-Net's skip connections: before conv5, conv6 and conv7 the upsampled
features are concatenated with conv3's, conv2's and conv1's (after their ReLU, before pooling), so the
full-resolution layers see the image's detail, not only what the 1/8-resolution bottleneck kept (1,558,851
parameters). FCRN-A has none; a 2-3 px contour band is what it could not draw. ``contour_skip_mn`` is
``contour_skip`` with a 4th class, micronucleus (mnfinder's annotated micronuclei, background to the other
nets), trained on the ``<split>_4class`` files. ``contour_skip_mnw`` is ``contour_skip_mn`` with the micronucleus
class weighted ``class_weights`` in the loss (Caffe's ``InfogainLoss`` with a diagonal matrix H, which
:func:`write_infogain` writes beside the run): under ``SoftmaxWithLoss`` a class of 0.3% of the pixels is never
predicted.
"""
import argparse
import sys
from pathlib import Path

from cellfcn import caffe_env, cli, files
from cellfcn.constants import FORMATS, STAGES, TARGET_FILES, TEST_SPLIT
from cellfcn.errors import InputError

DEPLOY = Path(__file__).resolve().parent / "deploy.prototxt"
DEFAULT = "fcrn_a"
# Kernel size, channels of conv1..conv7 and the number of 2x2 poolings (each undone by one upsampling).
# ``classes``: 2 (background, nucleus), 3 (background, interior, contour) or 4 (and micronucleus).
VARIANTS = {
    "fcrn_a": dict(kernel=3, widths=(32, 64, 128, 512, 128, 64, 32), pools=3, classes=2),
    "k5": dict(kernel=5, widths=(32, 64, 128, 512, 128, 64, 32), pools=3, classes=2),
    "pool2": dict(kernel=3, widths=(32, 64, 128, 512, 128, 64, 32), pools=2, classes=2),
    "wide": dict(kernel=3, widths=(64, 128, 256, 1024, 256, 128, 64), pools=3, classes=2),
    "contour": dict(kernel=3, widths=(32, 64, 128, 512, 128, 64, 32), pools=3, classes=3),
    "contour_skip": dict(kernel=3, widths=(32, 64, 128, 512, 128, 64, 32), pools=3, classes=3, skips=True),
    "contour_skip_mn": dict(kernel=3, widths=(32, 64, 128, 512, 128, 64, 32), pools=3, classes=4, skips=True),
    "contour_skip_mnw": dict(kernel=3, widths=(32, 64, 128, 512, 128, 64, 32), pools=3, classes=4, skips=True,
                             class_weights=(1.0, 1.0, 1.0, 10.0)),
}
INFOGAIN = "infogain.binaryproto"  # a weighted variant's H, in its run folder


def _caffe():
    caffe = caffe_env.pycaffe()  # NetSpec only writes prototxt: the mode stays the one the process's net set
    return caffe, caffe.layers, caffe.params


def _spec(variant):
    if variant not in VARIANTS:
        raise ValueError(f"net must be one of {sorted(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def _target_suffix(variant):
    """``_3class``/``_4class``: the dataset files of a variant's targets ('' for the two-class label)."""
    classes = _spec(variant)["classes"]
    return f"_{TARGET_FILES[classes][0]}" if classes in TARGET_FILES else ""


def class_weights(variant=DEFAULT):
    """The loss weight of each class of a variant, or None: every class weighs 1 (``SoftmaxWithLoss``)."""
    weights = _spec(variant).get("class_weights")
    return None if weights is None else tuple(float(w) for w in weights)


def write_infogain(path, variant):
    """Write the diagonal infogain matrix H of a weighted variant as the BlobProto ``InfogainLoss`` reads
    (shape 1x1xCxC, float32); return ``path``.

    With H = diag(w) the loss of a pixel of class c is ``-w[c] * log p_c`` and its gradient ``w[c]`` times
    ``SoftmaxWithLoss``'s; both normalise by the number of pixels, so weights of 1 give the same loss.
    """
    weights = class_weights(variant)
    if weights is None:
        raise ValueError(f"net {variant!r} has no class weights")
    blob = _caffe()[0].proto.caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 1, len(weights), len(weights)])
    blob.data.extend(w if i == j else 0.0 for i in range(len(weights)) for j, w in enumerate(weights))
    files.write_bytes(path, blob.SerializeToString())
    return path


def fcrn_a(n, bottom, variant=DEFAULT):
    """Add the body of net ``variant`` to NetSpec ``n`` on top of blob ``bottom``; return the score blob (one
    channel per class). Pooling follows conv1..conv<pools>; an upsampling precedes each of the last ``pools``
    of conv5..7."""
    spec = _spec(variant)
    caffe, L, P = _caffe()
    learned = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]

    def conv(x, nout, ks=spec["kernel"]):
        return L.Convolution(x, num_output=nout, kernel_size=ks, pad=ks // 2, param=learned,
                             weight_filler=dict(type="xavier"), bias_filler=dict(type="constant", value=0))

    def up(x, channels):
        return L.Deconvolution(x, param=[dict(lr_mult=0, decay_mult=0)], convolution_param=dict(
            num_output=channels, group=channels, kernel_size=4, stride=2, pad=1, bias_term=False,
            weight_filler=dict(type="bilinear")))

    widths, pools = spec["widths"], spec["pools"]
    x = bottom
    for i, nout in enumerate(widths[:3], start=1):
        setattr(n, f"conv{i}", conv(x, nout))
        setattr(n, f"relu{i}", L.ReLU(getattr(n, f"conv{i}"), in_place=True))
        x = getattr(n, f"relu{i}")
        if i <= pools:
            setattr(n, f"pool{i}", L.Pooling(x, pool=P.Pooling.MAX, kernel_size=2, stride=2))
            x = getattr(n, f"pool{i}")
    n.conv4 = conv(x, widths[3])
    n.relu4 = L.ReLU(n.conv4, in_place=True)
    x, channels = n.relu4, widths[3]
    for i, nout in enumerate(widths[4:], start=5):
        if i > 7 - pools:
            setattr(n, f"up{i}", up(x, channels))
            setattr(n, f"uprelu{i}", L.ReLU(getattr(n, f"up{i}"), in_place=True))
            x = getattr(n, f"uprelu{i}")
            if spec.get("skips"):  # U-Net's skip: the encoder's features at this resolution, before pooling
                setattr(n, f"skip{i}", L.Concat(x, getattr(n, f"relu{8 - i}")))
                x, channels = getattr(n, f"skip{i}"), channels + widths[7 - i]
        setattr(n, f"conv{i}", conv(x, nout))
        x, channels = getattr(n, f"conv{i}"), nout
        if i < 7 and i + 1 <= 7 - pools:  # no upsampling (and its ReLU) follows
            setattr(n, f"relu{i}", L.ReLU(x, in_place=True))
    # Xie et al. follow every convolution with a ReLU; without it conv7 and the 1x1 scores collapse into one
    # linear map.
    n.relu7 = L.ReLU(n.conv7, in_place=True)
    n.score = conv(n.relu7, spec["classes"], ks=1)
    return n.score


def learnable_parameters(variant=DEFAULT):
    """Learnable weights and biases of a variant, by its layout (the bilinear upsamplings are fixed)."""
    spec = _spec(variant)
    k2, widths = spec["kernel"] ** 2, spec["widths"]
    return sum(i * k2 * o + o for i, o in zip(_conv_inputs(spec), widths)) + (widths[-1] + 1) * spec["classes"]


def _conv_inputs(spec):
    """Input channels of conv1..conv7: the previous layer's, plus a skip's encoder features."""
    widths, inputs = spec["widths"], [1, *spec["widths"][:-1]]
    if spec.get("skips"):
        for i in range(8 - spec["pools"], 8):
            inputs[i - 1] += widths[7 - i]
    return inputs


def receptive_field(variant=DEFAULT):
    """Side in pixels of the input window one conv4 unit sees (the report's 38x38 for FCRN-A)."""
    spec = _spec(variant)
    size, jump = 1, 1
    for i in range(1, 5):
        size += (spec["kernel"] - 1) * jump
        if i <= spec["pools"] and i < 4:
            size, jump = size + jump, jump * 2
    return size


def multiply_adds(variant=DEFAULT, size=128):
    """Multiply-adds of the convolutions of a variant for one ``size`` x ``size`` input (forward pass; the fixed
    bilinear upsamplings and the 1x1 scores left out: under 0.1%)."""
    spec = _spec(variant)
    k2, total, scale = spec["kernel"] ** 2, 0, 1
    for i, (c_in, c_out) in enumerate(zip(_conv_inputs(spec), spec["widths"]), start=1):
        if i >= 5 and i > 7 - spec["pools"]:
            scale //= 2  # the upsampling before conv<i>
        total += (size // scale) ** 2 * c_in * c_out * k2
        if i <= spec["pools"] and i < 4:
            scale *= 2
    return total


def variant_of(net_name):
    """The variant a cellfcn net's name gives: ``<variant>_deploy``, or ``<variant>_<stage>_train`` as a
    trained model carries it (:func:`cellfcn.caffe_env.variant_name`).

    Raises
    ------
    InputError
        A name of another form or of no variant of ``VARIANTS``: a net that is not one of ours.
    """
    variant = caffe_env.variant_name(net_name)
    if variant not in VARIANTS:
        raise InputError(f"net '{net_name}' is none of cellfcn's nets (<variant>_deploy or "
                         f"<variant>_<stage>_train, variants: {', '.join(VARIANTS)})")
    return variant


def deploy_path(variant=DEFAULT):
    """The committed deploy prototxt of a variant."""
    _spec(variant)
    return DEPLOY if variant == DEFAULT else DEPLOY.with_name(f"deploy_{variant}.prototxt")


def train_net(source, batch_size, fmt, phase, variant=DEFAULT, infogain=None):
    """Return the NetParameter of a train (``phase='train'``) or test net over one dataset split.

    Parameters
    ----------
    source : str
        :func:`dataset_source`. HDF5: the list file. LMDB: the split prefix; ``_data_lmdb`` and
        ``_label_lmdb`` (3 or 4 classes: ``_3class_label_lmdb``, ``_4class_label_lmdb``) follow.
    batch_size : int
    fmt : {'hdf5', 'lmdb'}
    phase : {'train', 'test'}
    variant : str
        A key of ``VARIANTS``.
    infogain : str, optional
        A weighted variant's H file (:func:`write_infogain`); required exactly when it has class weights.
    """
    caffe, L, P = _caffe()
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if (class_weights(variant) is None) != (infogain is None):
        raise ValueError(f"net {variant!r}: an infogain file goes with class weights, and only with them")
    labels = f"{_target_suffix(variant)}_label_lmdb"
    n = caffe.NetSpec()
    if fmt == "hdf5":
        n.data, n.label = L.HDF5Data(ntop=2, hdf5_data_param=dict(
            source=source, batch_size=batch_size, shuffle=(phase == "train")))
    else:
        # Two Data layers read their databases in lockstep: same keys, same order, no shuffling.
        n.data = L.Data(source=f"{source}_data_lmdb", backend=P.Data.LMDB, batch_size=batch_size)
        n.label = L.Data(source=f"{source}{labels}", backend=P.Data.LMDB, batch_size=batch_size)
    score = fcrn_a(n, n.data, variant)
    if infogain is None:
        n.loss = L.SoftmaxWithLoss(score, n.label)
    else:
        n.loss = L.InfogainLoss(score, n.label, infogain_loss_param=dict(source=str(infogain)))
    if phase == "test":
        n.accuracy = L.Accuracy(score, n.label)
    return n.to_proto()


def deploy_net(height=128, width=128, variant=DEFAULT):
    """Return the deploy NetParameter of a variant: Input ``data`` (1,1,H,W) -> Softmax ``prob`` (1,C,H,W), C
    its classes."""
    caffe, L, P = _caffe()
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, height, width]))
    n.prob = L.Softmax(fcrn_a(n, n.data, variant))
    return n.to_proto()


def dataset_source(data_dir, split, fmt, variant=DEFAULT):
    """Where a dataset folder keeps a split for a variant's data layers (3 classes: ``<split>_3class.txt``,
    4: ``<split>_4class.txt``).

    The HDF5 list file names its ``.h5`` relative to the dataset folder, so ``caffe train`` runs there.
    """
    data_dir = Path(data_dir)
    if fmt == "lmdb":
        return str(data_dir / split)
    return str(data_dir / f"{split}{_target_suffix(variant)}.txt")


def dataset_files(split, fmt, variant=DEFAULT):
    """The files (relative to the dataset folder) a variant's data layers read for one split."""
    suffix = _target_suffix(variant)
    if fmt == "hdf5":
        return [f"{split}{suffix}.txt", f"{split}{suffix}.h5"]
    return [f"{split}_data_lmdb/data.mdb", f"{split}{suffix}_label_lmdb/data.mdb"]


def write_prototxt(path, net_param, name):
    """Write ``net_param`` as text with a ``name`` header, atomically."""
    net_param.name = name
    files.write_text(path, f"# Generated by prototxt/net.py; edit that file, then run `make prototxt`.\n{net_param}")


def default_files(batch_size=8, data_root="runs/data"):
    """Map committed file names to NetParameters: per stage, format and phase, plus the deploy net."""
    files = {deploy_path(v).name: (f"{v}_deploy", deploy_net(variant=v)) for v in VARIANTS}
    for stage, dataset in STAGES.items():
        for fmt in FORMATS:
            for phase, split in (("train", "train"), ("test", TEST_SPLIT[stage])):
                src = dataset_source(f"{data_root}/{dataset}", split, fmt)
                files[f"{stage}_{phase}_{fmt}.prototxt"] = (
                    f"fcrn_a_{stage}_{phase}", train_net(src, batch_size, fmt, phase))
    return files


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m prototxt.net", description="Write the FCRN-A prototxt "
                                     "files (train/test per stage and data format, and deploy).")
    parser.add_argument("--out", default=str(DEPLOY.parent), help="output folder (default: prototxt/)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        raise InputError(f"output folder does not exist: {out}")
    nets = default_files()
    for name, (title, param) in nets.items():
        write_prototxt(out / name, param, title)
    print(f"wrote {len(nets)} nets to {out}")


def main(argv=None):
    """Run the command; return its exit status (see cellfcn.cli)."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
