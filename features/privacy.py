"""Pseudonymization of PII with Spark built-ins only (no Python UDF on the hot path).

HMAC-SHA256 is built from `sha2` and `unhex` following RFC 2104: the key-dependent inner and
outer pads are computed once on the driver and travel as binary literals, so each row costs
two SHA-256 calls inside the JVM.
"""
from __future__ import annotations

import hashlib
import hmac

from pyspark.sql import Column
from pyspark.sql import functions as F

_BLOCK_SIZE = 64  # SHA-256 block size in bytes

_EMAIL_PATTERN = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"
# A quoted JSON value under a key that names a phone or an email, whatever the value looks like.
_PII_KEY_VALUE = r'("(?:email|e-mail|mail|phone|mobile|telephone|tel|recipient)"\s*:\s*)"[^"]*"'
# Phone-like runs that start with + or a bracketed area code: +1 (555) 010-1234, (555) 010 1234.
_PHONE_PATTERN = r"(\+\d|\(\d{2,4}\))[\d\s().\-]{6,}\d"


def hmac_pads(key: str) -> tuple[bytes, bytes]:
    """The inner and outer HMAC pads for `key` (RFC 2104)."""
    key_bytes = key.encode("utf-8")
    if len(key_bytes) > _BLOCK_SIZE:
        key_bytes = hashlib.sha256(key_bytes).digest()
    key_bytes = key_bytes.ljust(_BLOCK_SIZE, b"\0")
    inner = bytes(b ^ 0x36 for b in key_bytes)
    outer = bytes(b ^ 0x5C for b in key_bytes)
    return inner, outer


def hmac_sha256_hex(message: Column, key: str) -> Column:
    """Lower-case hex HMAC-SHA256 of a string column; null stays null."""
    inner, outer = hmac_pads(key)
    inner_digest = F.unhex(F.sha2(F.concat(F.lit(inner), F.encode(message, "UTF-8")), 256))
    return F.sha2(F.concat(F.lit(outer), inner_digest), 256)


def normalize_email(email: Column) -> Column:
    """Trimmed, lower-cased; empty becomes null."""
    cleaned = F.lower(F.trim(email))
    return F.when(cleaned != "", cleaned)


def normalize_phone(phone: Column, default_country_code: str) -> Column:
    """E.164 digits with a leading '+'.

    '+44 20 …' and '0044 20 …' keep their country code; a national number gets
    `default_country_code` with a single trunk '0' dropped. Fewer than 7 digits is not a phone.
    """
    trimmed = F.trim(phone)
    digits = F.regexp_replace(trimmed, r"[^0-9]", "")
    international = (F.when(trimmed.startswith("+"), digits)
                     .when(digits.startswith("00"), digits.substr(F.lit(3), F.length(digits))))
    national = F.concat(F.lit(default_country_code), F.regexp_replace(digits, r"^0", ""))
    e164_digits = F.coalesce(international, national)
    return F.when(F.length(digits) >= 7, F.concat(F.lit("+"), e164_digits))


def mask_pii_text(raw: Column) -> Column:
    """The raw record text with email and phone values masked, for the quarantine."""
    masked = F.regexp_replace(raw, _PII_KEY_VALUE, '$1"***"')
    masked = F.regexp_replace(masked, _EMAIL_PATTERN, "***@***")
    return F.regexp_replace(masked, _PHONE_PATTERN, "***")


SUPPRESSION_CONTEXT = b"tailor-suppression-list-v1"


def suppression_token(identifier_type: str, identifier: str, pii_key: str) -> str:
    """How the suppression list stores an identifier: HMAC-SHA256 under a key derived from the
    PII key for this purpose only, so the list holds neither raw ids nor the event hashes."""
    derived = hmac.new(pii_key.encode("utf-8"), SUPPRESSION_CONTEXT, hashlib.sha256).digest()
    message = f"{identifier_type}:{identifier}".encode("utf-8")
    return hmac.new(derived, message, hashlib.sha256).hexdigest()
