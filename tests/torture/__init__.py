"""Short runs of the torture tools (``tools/torture``)."""
