"""End-to-end pipelines composed from rtsflow stages (they own clusters, compute and run records)."""
