"""What an error message, a log line or a rejection detail may say about a value that could be a
badge credential or a name (issue 12 item 6): its length and a short keyed hash, never the value.

The hash is HMAC-SHA256 under a random key made once per process, cut to 8 hex digits: the same
value gives the same tag within one process (an operator can see that two rejections are of one
badge), while a tag cannot be turned back into a badge number by trying every number, as a plain
hash of a short badge id could be. Tags of two processes (or after a restart) do not match.
"""

from __future__ import annotations

import hashlib
import hmac
import os

_KEY = os.urandom(32)


def redact(value: object) -> str:
    """``<redacted N chars #tag>`` for ``value`` (its ``str`` for a non-string)."""
    text = value if isinstance(value, str) else repr(value)
    tag = hmac.new(_KEY, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:8]
    return f"<redacted {len(text)} chars #{tag}>"
