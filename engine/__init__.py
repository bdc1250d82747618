"""BS-80K streaming weak-localisation engine: pure core (letterbox, CAM, boxes, metrics, parsing) + Ray stages."""
