"""Analytic FLOP counts of FCRN-A (``prototxt/net.py``): 2 FLOP per multiply-add, convolutions only.

ReLU, pooling and the softmax loss do a few operations per element and are left out (they are memory-bound);
so are the fixed bilinear upsampling layers' weight gradients, which neither framework computes.
"""
from collections import OrderedDict

# name: (kind, in channels, out channels, kernel, scale of the layer's input relative to the patch)
LAYERS = OrderedDict([
    ("conv1", ("conv", 1, 32, 3, 1)),
    ("conv2", ("conv", 32, 64, 3, 2)),
    ("conv3", ("conv", 64, 128, 3, 4)),
    ("conv4", ("conv", 128, 512, 3, 8)),
    ("up5", ("deconv", 512, 512, 4, 8)),
    ("conv5", ("conv", 512, 128, 3, 4)),
    ("up6", ("deconv", 128, 128, 4, 4)),
    ("conv6", ("conv", 128, 64, 3, 2)),
    ("up7", ("deconv", 64, 64, 4, 2)),
    ("conv7", ("conv", 64, 32, 3, 1)),
    ("score", ("conv", 32, 2, 1, 1)),
])


def layer_flops(height=128, width=128):
    """Forward and backward FLOPs per image of each convolution layer.

    Parameters
    ----------
    height, width : int
        Input size, multiples of 8.

    Returns
    -------
    OrderedDict
        name -> dict(forward=float, backward=float). Backward is the data gradient (skipped for conv1, whose
        input is the image) plus the weight gradient (skipped for the fixed upsampling kernels).
    """
    if height % 8 or width % 8 or height <= 0 or width <= 0:
        raise ValueError(f"input size must be positive multiples of 8, got {height}x{width}")
    out = OrderedDict()
    for name, (kind, cin, cout, k, scale) in LAYERS.items():
        pixels = (height // scale) * (width // scale)
        if kind == "conv":
            fwd = 2.0 * k * k * cin * cout * pixels
            bwd = fwd * (1 if name == "conv1" else 2)
        else:  # depthwise transposed conv: every input pixel spreads k*k taps per channel
            fwd = 2.0 * k * k * cin * pixels
            bwd = fwd
        out[name] = dict(forward=fwd, backward=bwd)
    return out


def forward_flops(height=128, width=128):
    """Forward FLOPs per image (about 3.03e9 for 128x128)."""
    return sum(v["forward"] for v in layer_flops(height, width).values())


def train_flops(height=128, width=128):
    """Forward plus backward FLOPs per image of one training step (about 3x the forward)."""
    return sum(v["forward"] + v["backward"] for v in layer_flops(height, width).values())
