"""timeclock's wire contract (DESIGN.md §2-4, §6): the bytes two implementations must agree on.

Pure: no hardware, database or network imports. Objects that exist are valid: every
``from_dict``/``from_bytes`` validates strictly, and the canonical bytes of an object are the
only bytes ever signed or hashed.
"""

from __future__ import annotations

ZERO_HASH = "0" * 64
