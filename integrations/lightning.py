"""The lightning adapter: ``ShelfCheckpoint`` (SPEC §5) lands here with its issue.

Importing this module already checks that lightning is installed and names the extra otherwise.
"""

from __future__ import annotations

from modelshelf._deps import require

lightning = require("lightning", "modelshelf.integrations.lightning")
