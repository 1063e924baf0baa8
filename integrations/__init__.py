"""Framework adapters, importable as ``modelshelf.integrations.<framework>``.

Each adapter imports its framework when it is imported (never ``import modelshelf`` itself); a
missing framework raises ``MissingDependencyError`` naming the extra to install.
"""
