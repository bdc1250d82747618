"""From a heatmap to places: CAM basins, pseudo boxes, the stream's box columns, no-model priors, box methods."""
