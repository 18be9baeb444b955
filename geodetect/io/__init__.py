"""Reading scenes, mosaics and vector layers; writing GIS outputs."""
