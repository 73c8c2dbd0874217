"""Validated simulation parameters (SIMCEP defaults, Lehmussola et al. 2007)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

TARGETS = ("nuclei", "cells")
BACKGROUND_REFERENCES = ("sharp", "blurred")
# simcep_py's measurement model before it matched the original SIMCEP: random illumination shift, one
# full Gaussian per object, peak-normalised float output without quantisation, fine autofluorescence.
LEGACY_MEASUREMENT = {"illum_shift": 0.25, "blur_per_group": False, "blur_relative_depth": False,
                      "blur_window": 0, "peak_normalise": True, "background_texture": (0.6, 2, 6, 0.0),
                      "background_reference": "blurred", "jpeg_output": False}


def _check(cond, message):
    if not cond:
        raise ValueError(message)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_texture(name, value):
    _check(isinstance(value, tuple) and len(value) == 4,
           f"{name} must be a tuple (persistence, n1, n2, b), got {value!r}")
    p, n1, n2, b = value
    _check(_is_number(p) and 0 < p <= 1, f"{name}: persistence must be in (0, 1], got {p!r}")
    _check(_is_int(n1) and 1 <= n1 <= 10,
           f"{name}: first octave n1 must be an integer in [1, 10], got {n1!r}")
    _check(_is_int(n2) and 1 <= n2 <= 10,
           f"{name}: octave count n2 must be an integer in [1, 10], got {n2!r}")
    _check(_is_number(b) and 0 <= b <= 1, f"{name}: base level b must be in [0, 1], got {b!r}")


@dataclass(frozen=True)
class SimcepParams:
    """Parameters of one SIMCEP simulation; invalid values raise ``ValueError``.

    Shape, texture, placement and measurement defaults follow the SIMCEP paper and tool; at the defaults
    the measurement model reproduces the original Matlab code (centred illumination, one defocus depth per
    group of touching objects through a 9x9 window, natural-scale sum clipped to [0, 1], coarse
    autofluorescence, background energy matched to the sharp cells, 8-bit JPEG output). Values the
    tool leaves to the user (``cytoplasm_radius``, ``clustprob``, ``clust``, ``overlap``) and the
    simplex settings are this project's choices, documented below. The measurement model simcep_py
    used before it matched the original is ``SimcepParams(**LEGACY_MEASUREMENT)``.

    Attributes
    ----------
    nucleus_radius, cytoplasm_radius : float
        Object radii in pixels, in [2, 1000]. The cytoplasm contains the nucleus, so it must not be smaller.
    nucleus_shape, cytoplasm_shape : tuple of float
        ``(alpha, beta)``: random radial and angular perturbation of the 11 spline knots.
    nucleus_texture, cytoplasm_texture, background_texture : tuple
        ``(persistence p, first octave n1, octave count n2, base level b)`` of the Perlin-style texture.
        The background (autofluorescence) default ``(1.0, 1, 2, 0.0)`` is SIMCEP's: two equally weighted
        coarse octaves, 2 and 4 cells across the image.
    clustprob : float
        Probability that a cell is placed near a cluster centre rather than uniformly, in [0, 1].
    clust : int
        Number of cluster centres (>= 1).
    spatvar : float
        Standard deviation of the cluster spread as a fraction of the image size, > 0.
    overlap : float
        Largest allowed overlap fraction between two target objects (nuclei or whole cells, per
        ``target``), measured both ways, in [0, 1].
    max_tries : int
        Placement attempts per cell before it is dropped (the tool's 50 retries plus the first try).
    illumscale, autofluorscale : float
        Energy (sum of squares) of the illumination bowl and of the autofluorescence texture relative
        to the energy of the cells, >= 0.
    background_reference : {'sharp', 'blurred'}
        Cell image whose energy the illumination and autofluorescence are matched to: the ideal
        image before defocus (SIMCEP) or after it (about 6% dimmer background relative to the cells).
    illum_shift : float
        Largest random shift of the illumination centre from the image centre, as a fraction of the
        size, in [0, 0.5]. 0 (SIMCEP: no misalignment) centres the bowl.
    blur_depth_std : float
        Each depth is ``|N(0, blur_depth_std)|``.
    blur_per_group : bool
        One depth per group of touching (8-connected) target objects, as SIMCEP; False draws one
        depth per object.
    blur_relative_depth : bool
        Divide the depths by the image's largest, so the deepest group always gets the largest sigma
        (SIMCEP); False clips each depth at 1 instead.
    blur_sigma_range : tuple of float
        Gaussian sigma for depth 0 and for (relative) depth 1, linear in between, in pixels.
    blur_window : int
        Side of the square window the Gaussian is sampled on and normalised over: 9 in SIMCEP, which
        caps the kernel's effective spread near 2.4 px whatever the sigma. 0 uses the full Gaussian
        (cut at ``measurement.BLUR_TRUNCATE`` sigmas). Odd, in [3, 61], or 0.
    peak_normalise : bool
        Divide the ideal image by its peak before the noise, so nothing saturates. False (SIMCEP)
        keeps cells, illumination and autofluorescence at their natural scale; the noisy sum is clipped
        to [0, 1], so the brightest few percent of nucleus pixels saturate.
    noise_var : float
        Variance of the additive Gaussian CCD noise (image scale [0, 1]).
    jpeg_output : bool
        Pass the image through an 8-bit JPEG at quality ``round(100 * (1 - comp))`` (100 by default),
        as SIMCEP writes its output: ``image`` then holds multiples of 1/255. False keeps the
        unquantised float image (``comp`` must then be 0).
    comp : float
        JPEG compression in [0, 1).
    simplex_strength : float
        Peak of the simplex-noise background relative to the mean cell intensity (used only when
        ``simulate(..., simplex_background=True)``).
    simplex_scale : float
        Feature size of the simplex background as a fraction of the image size.
    target : {'nuclei', 'cells'}
        Which channel and mask the simulation returns as ``image`` / ``mask``.
    """

    nucleus_radius: float = 10.0
    cytoplasm_radius: float = 20.0
    nucleus_shape: tuple = (0.1, 0.1)
    cytoplasm_shape: tuple = (0.3, 0.05)
    nucleus_texture: tuple = (0.5, 2, 5, 0.2)
    cytoplasm_texture: tuple = (0.9, 2, 8, 0.2)
    background_texture: tuple = (1.0, 1, 2, 0.0)
    clustprob: float = 0.5
    clust: int = 5
    spatvar: float = 0.05
    overlap: float = 0.2
    max_tries: int = 51
    illumscale: float = 1.0
    autofluorscale: float = 0.05
    background_reference: str = "sharp"
    illum_shift: float = 0.0
    blur_depth_std: float = 0.5
    blur_per_group: bool = True
    blur_relative_depth: bool = True
    blur_sigma_range: tuple = (0.5, 5.0)
    blur_window: int = 9
    peak_normalise: bool = False
    noise_var: float = 1e-4
    jpeg_output: bool = True
    comp: float = 0.0
    simplex_strength: float = 0.5
    simplex_scale: float = 0.3
    target: str = "nuclei"

    def __post_init__(self):
        # JSON round trips give lists; store tuples so the dataclass stays hashable and comparable.
        for field in ("nucleus_shape", "cytoplasm_shape", "nucleus_texture", "cytoplasm_texture",
                      "background_texture", "blur_sigma_range"):
            value = getattr(self, field)
            if isinstance(value, list):
                object.__setattr__(self, field, tuple(value))
        self.validate()

    def validate(self):
        """Raise ``ValueError`` naming the first invalid field."""
        for name in ("nucleus_radius", "cytoplasm_radius"):
            value = getattr(self, name)
            _check(_is_number(value) and 2 <= value <= 1000, f"{name} must be in [2, 1000] px, got {value!r}")
        _check(self.cytoplasm_radius >= self.nucleus_radius,
               f"cytoplasm_radius ({self.cytoplasm_radius}) must be >= nucleus_radius ({self.nucleus_radius})")
        for name in ("nucleus_shape", "cytoplasm_shape"):
            value = getattr(self, name)
            _check(isinstance(value, tuple) and len(value) == 2 and all(_is_number(v) for v in value),
                   f"{name} must be a pair (alpha, beta), got {value!r}")
            _check(0 <= value[0] <= 0.5 and 0 <= value[1] <= 0.5,
                   f"{name}: alpha and beta must be in [0, 0.5], got {value!r}")
        for name in ("nucleus_texture", "cytoplasm_texture", "background_texture"):
            _check_texture(name, getattr(self, name))
        for name in ("clustprob", "overlap"):
            value = getattr(self, name)
            _check(_is_number(value) and 0 <= value <= 1, f"{name} must be in [0, 1], got {value!r}")
        _check(_is_int(self.clust) and self.clust >= 1,
               f"clust must be an integer >= 1, got {self.clust!r}")
        _check(_is_int(self.max_tries) and self.max_tries >= 1,
               f"max_tries must be an integer >= 1, got {self.max_tries!r}")
        _check(_is_number(self.spatvar) and 0 < self.spatvar <= 1, f"spatvar must be in (0, 1], got {self.spatvar!r}")
        for name in ("illumscale", "autofluorscale", "simplex_strength", "noise_var"):
            value = getattr(self, name)
            _check(_is_number(value) and value >= 0, f"{name} must be >= 0, got {value!r}")
        _check(_is_number(self.illum_shift) and 0 <= self.illum_shift <= 0.5,
               f"illum_shift must be in [0, 0.5], got {self.illum_shift!r}")
        _check(_is_number(self.blur_depth_std) and self.blur_depth_std >= 0,
               f"blur_depth_std must be >= 0, got {self.blur_depth_std!r}")
        s = self.blur_sigma_range
        _check(isinstance(s, tuple) and len(s) == 2 and all(_is_number(v) for v in s) and 0 <= s[0] <= s[1] <= 20,
               f"blur_sigma_range must be (low, high) with 0 <= low <= high <= 20, got {s!r}")
        w = self.blur_window
        _check(_is_int(w) and (w == 0 or (3 <= w <= 61 and w % 2 == 1)),
               f"blur_window must be 0 or an odd integer in [3, 61], got {w!r}")
        for name in ("blur_per_group", "blur_relative_depth", "peak_normalise", "jpeg_output"):
            value = getattr(self, name)
            _check(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
        _check(self.background_reference in BACKGROUND_REFERENCES,
               f"background_reference must be one of {BACKGROUND_REFERENCES}, got {self.background_reference!r}")
        _check(_is_number(self.comp) and 0 <= self.comp < 1, f"comp must be in [0, 1), got {self.comp!r}")
        _check(self.jpeg_output or self.comp == 0, f"comp ({self.comp}) needs jpeg_output=True")
        _check(_is_number(self.simplex_scale) and 0 < self.simplex_scale <= 4,
               f"simplex_scale must be in (0, 4], got {self.simplex_scale!r}")
        _check(self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}")

    def to_dict(self):
        """Plain JSON-serialisable dict of every field."""
        def plain(value):
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value.item() if hasattr(value, "item") else value

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values):
        """Build from a dict (e.g. ``to_dict`` output); unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown SIMCEP parameter(s): {', '.join(unknown)}")
        return cls(**values)
