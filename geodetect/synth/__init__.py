"""Procedural suburban orthomosaics with known pools, for training, tests and demos.

`synth_scene` lays out a suburb in metres (roads, parcels, houses, yards, pools, trees
and the things a detector mistakes for pools), renders it block by block into RGB
GeoTIFFs on one pixel grid and writes the true pool outlines to ``truth.gpkg``.

The result is a pure function of the arguments: every texture is a hash of absolute
pixel coordinates and the seed, so a scene cut into tiles has exactly the pixels of the
same scene written as one file.

Modules, in the order a scene is made:

- `scene`: the layout in metres (street grid, blocks, parcels, parks, stores);
- `objects`: the things drawn (pools, houses, cars, trees, ponds, tarps), their shapes
  and colours, and the truth gathered while drawing them;
- `render`: noise textures and render passes, turned into pixels window by window;
- `write`: arguments, CRS and origin, the GeoTIFFs and truth layers written atomically.

`synth_landscape` writes a county-like mosaic for speed benchmarks: tiles of pool-free
land cover (`landcover`: fields, forest, water, roads, dense roofs) with suburb tiles
among them (`landscape`).
"""

from geodetect.synth.landscape import SynthLandscape, synth_landscape
from geodetect.synth.objects import (
    CONDITIONS,
    DISTRACTOR_KINDS,
    MAX_OCCLUSION,
    POOL_SHAPES,
    POOL_SIDE_M,
)
from geodetect.synth.write import (
    DISTRACTOR_LAYER,
    DISTRACTORS_NAME,
    POOL_LAYER,
    TRUTH_NAME,
    SynthScene,
    synth_scene,
)

__all__ = [
    "CONDITIONS",
    "DISTRACTORS_NAME",
    "DISTRACTOR_KINDS",
    "DISTRACTOR_LAYER",
    "MAX_OCCLUSION",
    "POOL_LAYER",
    "POOL_SHAPES",
    "POOL_SIDE_M",
    "TRUTH_NAME",
    "SynthLandscape",
    "SynthScene",
    "synth_landscape",
    "synth_scene",
]
