"""Table `seg_masks`: the segmentation network's masks (`make segment`), one row per connected component.

The columns are those of table `masks` (schemas/masks.py, imported, not restated) so that every mask reader and
metric takes either; `segmenter` is `segnet`, `rank` the component's rank by score (0 = best), `score` the mean
pixel probability inside the component, `y_prob` the image's highest pixel probability. `contrast`, `cam_inside`,
`cam_ring` and `agreement_iou` are null (no box prompt, no CAM), `qc_flags` empty and `kept` true.
A table of its own: `make masks` rewrites table `masks` whole, and no pseudo-mask reader sees network masks.
"""

from schemas.masks import PARTITION_COLS, SCHEMA

SCHEMA_VERSION = 1
__all__ = ["PARTITION_COLS", "SCHEMA", "SCHEMA_VERSION"]
