"""FCRN-A in PyTorch, layer for layer the net of ``prototxt/net.py``: the speed peer for ``bench/`` only.

Layer names match Caffe's (conv1..conv7, up5..up7, score) so that :func:`load_params` copies a pycaffe
net's weights (:func:`caffe_params`) by name; ``tests/test_bench_net.py`` checks that both nets then give the same output.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

ENCODER = (("conv1", 1, 32), ("conv2", 32, 64), ("conv3", 64, 128))
DECODER = (("up5", "conv5", 512, 128), ("up6", "conv6", 128, 64), ("up7", "conv7", 64, 32))


def bilinear_kernel(channels, size=4):
    """Caffe's ``bilinear`` filler for a depthwise Deconvolution: weights (channels, 1, size, size)."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - torch.abs(torch.arange(size, dtype=torch.float64) / f - c)
    return torch.outer(ramp, ramp).to(torch.float32).expand(channels, 1, size, size).clone()


class FCRNA(nn.Module):
    """FCRN-A with two output classes; ``forward`` returns the (N, 2, H, W) scores (no softmax)."""

    def __init__(self):
        super().__init__()
        for name, cin, cout in ENCODER:
            self.add_module(name, nn.Conv2d(cin, cout, 3, padding=1))
        self.conv4 = nn.Conv2d(128, 512, 3, padding=1)
        for up, conv, cin, cout in DECODER:
            # Fixed bilinear x2 upsampling, one group per channel, as Caffe's Deconvolution (lr_mult 0).
            deconv = nn.ConvTranspose2d(cin, cin, 4, stride=2, padding=1, groups=cin, bias=False)
            deconv.weight.data.copy_(bilinear_kernel(cin))
            deconv.weight.requires_grad_(False)
            self.add_module(up, deconv)
            self.add_module(conv, nn.Conv2d(cin, cout, 3, padding=1))
        self.score = nn.Conv2d(32, 2, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _xavier_like_caffe(m)

    def forward(self, x):
        for name, _, _ in ENCODER:
            # Caffe's pooling rounds the output size up; ceil_mode does the same.
            x = F.max_pool2d(F.relu(getattr(self, name)(x)), 2, 2, ceil_mode=True)
        x = F.relu(self.conv4(x))
        for up, conv, _, _ in DECODER:
            x = getattr(self, conv)(F.relu(getattr(self, up)(x)))
        return self.score(F.relu(x))


def _xavier_like_caffe(conv):
    """Caffe's default ``xavier`` filler: U(-a, a), a = sqrt(3 / fan_in); zero bias."""
    fan_in = conv.weight[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(conv.weight, -bound, bound)
    nn.init.zeros_(conv.bias)


def n_learnable(model):
    """Number of learnable parameters (the fixed bilinear kernels excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def caffe_params(net):
    """The parameter blobs of a pycaffe net as {layer: [weight, bias...]} float32 arrays (copies)."""
    return {name: [blob.data.copy() for blob in blobs] for name, blobs in net.params.items()}


def load_params(model, params):
    """Copy Caffe-layout parameters ({layer: [weight, bias...]}, see :func:`caffe_params`) into ``model``.

    Raises
    ------
    ValueError
        If a layer is missing on either side or a shape differs.
    """
    torch_layers = {name for name, m in model.named_children() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    if set(params) != torch_layers:
        raise ValueError(f"layer names differ: caffe {sorted(params)} vs torch {sorted(torch_layers)}")
    with torch.no_grad():
        for name, blobs in params.items():
            module = getattr(model, name)
            targets = [module.weight] + ([module.bias] if module.bias is not None else [])
            if len(targets) != len(blobs):
                raise ValueError(f"{name}: caffe has {len(blobs)} blobs, torch {len(targets)}")
            for target, blob in zip(targets, blobs):
                if tuple(target.shape) != tuple(blob.shape):
                    raise ValueError(f"{name}: shape {tuple(blob.shape)} vs {tuple(target.shape)}")
                target.copy_(torch.from_numpy(blob))
    return model


def sgd(model, lr=1e-3, momentum=0.9, weight_decay=5e-4):
    """SGD with Caffe's per-parameter multipliers of net.py: biases at 2x lr and without weight decay."""
    weights = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    return torch.optim.SGD([dict(params=weights), dict(params=biases, lr=2 * lr, weight_decay=0.0)],
                           lr=lr, momentum=momentum, weight_decay=weight_decay)
