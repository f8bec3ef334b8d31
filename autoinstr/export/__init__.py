"""Export: the pipeline (buffer + flush thread) and one module per exporter."""
