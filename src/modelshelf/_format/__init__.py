"""The on-shelf format: names, keys, record shapes, logs of records and manifests.

Nothing here does I/O beyond the storage primitives it is handed; docs/format.md describes
the same things in prose.
"""
