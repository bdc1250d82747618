"""The classifier: the timm model factory, training augmentation, CAM math on tensors."""
