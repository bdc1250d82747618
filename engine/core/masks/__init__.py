"""Box prompt -> pseudo mask: classical and SAM-family segmenters, crops and mask QC."""
