"""The serving suppression list: `suppression/*.jsonl` under the storage root.

Each line is {"token", "reason", "at", …}: the token is a purpose-keyed HMAC of one identifier
(features.privacy.suppression_token), so the list holds neither raw ids nor the hashes used in
events. The service re-reads the whole folder periodically and answers suppressed people
without personalization. `tailor forget` adds one file per request; the identity job rewrites
`consent_withdrawn.jsonl` on every run, so a person who consents again drops off it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone

from features.privacy import suppression_token
from jobs.storage import Storage

FOLDER = "suppression"


def write_list(storage: Storage, name: str, identifiers: Iterable[tuple[str, str]], pii_key: str,
               reason: str, **fields) -> int:
    """Write suppression/NAME.jsonl for (identifier_type, identifier) pairs; returns the count."""
    tokens = sorted({suppression_token(kind, value, pii_key) for kind, value in identifiers})
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    storage.write_text(storage.uri(FOLDER, f"{name}.jsonl"), "".join(
        json.dumps({"token": token, "reason": reason, **fields, "at": now}) + "\n" for token in tokens))
    return len(tokens)
