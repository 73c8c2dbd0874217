"""simcep_py: synthetic fluorescence microscope images of cell populations with ground truth.

A Python implementation of SIMCEP (Lehmussola et al., IEEE TMI 26(7), 2007), written from the
published algorithm, plus the simplex-noise background of Marzo & La Rosa (2016).

>>> from simcep_py import simulate
>>> sim = simulate(shape=(512, 512), n_cells=50, seed=0, simplex_background=True)
>>> sim.image.dtype, sim.mask.dtype
(dtype('float32'), dtype('bool'))
"""

from .params import SimcepParams
from .placement import CellObject
from .simulation import Simulation, simulate

__all__ = ["CellObject", "SimcepParams", "Simulation", "simulate"]
