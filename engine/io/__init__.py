"""The filesystem and the tables: paths, Parquet, checkpoints, the columns <-> arrays codecs."""
