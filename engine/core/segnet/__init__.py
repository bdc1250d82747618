"""The segmentation network trained on pseudo masks: the smp model, its loss, its targets and outputs."""
