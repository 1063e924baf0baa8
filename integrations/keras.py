"""The keras adapter: ``ShelfCheckpoint`` (SPEC §5) lands here with its issue.

Importing this module already checks that keras is installed and names the extra otherwise.
"""

from __future__ import annotations

from modelshelf._deps import require

keras = require("keras", "modelshelf.integrations.keras")
