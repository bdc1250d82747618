"""A scan on its way in: counts -> grey levels, image and DICOM decoding, the letterbox, image QC."""
