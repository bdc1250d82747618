"""Everything that touches Ray: init, the image stream, actor pools, batch UDFs, the Ray Train loops."""
