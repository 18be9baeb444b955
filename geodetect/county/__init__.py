"""County answers built on a detection layer: parcels and the tax roll (more to come:
change between flights, a reviewed sample to a count with a confidence interval).

These work on layers, not pixels: they read and write through :mod:`geodetect.io`, and
each CLI command is a thin caller of a function here that the notebook can call too.
"""

from geodetect.county.change import Change, compare_flights
from geodetect.county.layers import DetectionLayer, read_detections
from geodetect.county.parcels import ROLL_FORMS, ParcelJoin, join_parcels, parse_roll

__all__ = [
    "ROLL_FORMS",
    "Change",
    "DetectionLayer",
    "ParcelJoin",
    "compare_flights",
    "join_parcels",
    "parse_roll",
    "read_detections",
]
