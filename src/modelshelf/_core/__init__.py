"""The repository core: versions, aliases, labels, blobs, the commit path, gc and downloads.

Everything here works on a ``Repository`` and the layers below it (format, storage); the
public ``Shelf`` facade and the features above call its public methods.
"""
