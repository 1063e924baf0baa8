"""What users do with versions beyond storing them: runs and lineage, diff and compare, copy
between shelves, clean-up. Each takes the ``Repository`` and calls its public methods."""
