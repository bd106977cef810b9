"""PII redaction with typed placeholders: ``<EMAIL>``, ``<IP_ADDRESS>``, ``<PHONE_NUMBER>``, ``<CARD_NUMBER>``.

Built on datatrove's :class:`~datatrove.pipeline.formatters.pii.PIIFormatter`, which finds emails and
IP addresses (public ones only by default: 192.168.x.x names no one). Its default replacements are
realistic-looking fake addresses; typed placeholders are used instead, so a model learns that an
address stood there without learning a fake one, and the validation suite can tell redacted text apart.

datatrove has no phone or card rule, so two more datatrove ``PIIReplacer`` s are added here:

- card numbers: 13–19 digits (spaces or dashes allowed between them), a card-network first digit
  (2–6), and a valid Luhn check digit. The checksum keeps order numbers, ISBNs and other long digit
  runs (9 in 10 of which fail it) out of the redaction.
- phone numbers: 9–15 digits (E.164 allows at most 15) in groups separated by spaces, dots or dashes,
  with a ``+`` country code, a parenthesised area code, or dot/dash separators. Bare digit runs and
  space-separated numbers ("in 1999 2000 2001") are left alone: they are far more often not phones.

Order matters: cards first (a spaced card number also looks like a phone), then emails, then IPs
(a dotted IP also looks like a phone), then phones. Each kind redacted in a document counts as
``modified_<kind>``.
"""

from __future__ import annotations

import ipaddress
import re

from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.pii import PIIReplacer

from components.curate.base import CountingFormatter

EMAIL_TAG, IP_TAG, PHONE_TAG, CARD_TAG = "<EMAIL>", "<IP_ADDRESS>", "<PHONE_NUMBER>", "<CARD_NUMBER>"

CARD = re.compile(r"(?<![\d-])[2-6](?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(
    r"(?<![\w+.-])(?:\+\d{8,15}|(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4})(?![\w-]|\.\d)"
)


def luhn_valid(number: str) -> bool:
    """The Luhn (mod 10) check every payment card number passes."""
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def phone_like(match: str) -> bool:
    n_digits = sum(c.isdigit() for c in match)
    if not 9 <= n_digits <= 15 or not any(c in match for c in "+(.-"):
        return False
    try:  # a dotted quad is an IP address (a private one the IP rule left in place), not a phone
        ipaddress.ip_address(match)
        return False
    except ValueError:
        return True


class PIIRedactor(CountingFormatter, PIIFormatter):
    name = "pii"

    def __init__(self, only_public_ips: bool = True) -> None:
        super().__init__(only_remove_public_ips=only_public_ips, email_replacement=EMAIL_TAG, ip_replacement=IP_TAG)
        self.replacers = [
            ("card", PIIReplacer(CARD.pattern, CARD_TAG, validator=luhn_valid)),
            ("email", self.emails_replacer),
            ("ip", self.ip_replacer),
            ("phone", PIIReplacer(PHONE.pattern, PHONE_TAG, validator=phone_like)),
        ]

    def format(self, text: str) -> str:
        for kind, replacer in self.replacers:
            redacted = replacer.replace(text)
            if redacted != text:
                self.stat_update(f"modified_{kind}")
                text = redacted
        return text

    def find(self, text: str) -> list[str]:
        """The kinds of PII still present in ``text`` (what the validation suite checks is empty)."""
        found = []
        for kind, replacer in self.replacers:
            if any(replacer.validator is None or replacer.validator(m.group(0)) for m in replacer.regex.finditer(text)):
                found.append(kind)
        return found
