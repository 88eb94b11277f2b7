"""Per-customer message templates: ``{{ field }}`` placeholders, and the offer's required disclosures appended.

A placeholder whose field is missing (or empty) is an error naming the field, never a blank in a message sent
to a customer. Field names are reported, values never (they are personal data).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.campaign.domain import Disclosure

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")


class TemplateError(ValueError):
    def __init__(self, reason: str, fields: Sequence[str]) -> None:
        self.reason = reason
        self.fields = list(fields)
        super().__init__(f"{reason}: {', '.join(self.fields)}")


def placeholders(template: str) -> list[str]:
    """The field names a template uses, in order of first appearance."""
    seen: dict[str, None] = {}
    for match in _PLACEHOLDER.finditer(template):
        seen.setdefault(match.group(1))
    return list(seen)


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    body: str
    fields: dict[str, str]  # the fields the templates used, as text (for template-message channels)


def render_text(template: str, values: Mapping[str, object]) -> str:
    missing = [name for name in placeholders(template) if values.get(name) in (None, "")]
    if missing:
        raise TemplateError("TEMPLATE_FIELD_MISSING", missing)
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def render(body_template: str, values: Mapping[str, object], disclosures: Sequence[Disclosure], *,
           subject_template: str = "") -> RenderedMessage:
    """Render subject and body, then append every disclosure (each on its own line, after a blank line).
    Raises TemplateError TEMPLATE_FIELD_MISSING naming every missing field of both templates at once."""
    missing = [n for n in placeholders(subject_template + "\n" + body_template) if values.get(n) in (None, "")]
    if missing:
        raise TemplateError("TEMPLATE_FIELD_MISSING", missing)
    body = render_text(body_template, values).rstrip()
    texts = [d.text.strip() for d in disclosures if d.text.strip()]
    if texts:
        body = body + "\n\n" + "\n".join(texts)
    used = {n: str(values[n]) for n in placeholders(subject_template + "\n" + body_template)}
    return RenderedMessage(render_text(subject_template, values) if subject_template else "", body, used)
