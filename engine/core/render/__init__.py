"""What a page or a DICOM image shows, as bytes: report plots, HTML tables, the export's drawing."""
