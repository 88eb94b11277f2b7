"""Content compliance: banned claims and required disclosures in a marketing text (CheckContent).

The rules live in content_rules.yaml (versioned). Matching is done on a normalised copy of the text: each
original character is NFKC-normalised and case-folded, and spacing, punctuation and symbols are dropped, so a
phrase hidden as "g u a r a n t e e d  r e t u r n", "保 本" or full-width "risk-free" is still found. Every
normalised character remembers the index of the original character it came from, so positions are reported
in the original text ([start, end) in code points). Pure code: no I/O beyond loading the rules file.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from services.risk.domain import ProductType

RULES_FILE = Path(__file__).with_name("content_rules.yaml")
LANGUAGES = ("zh", "en")


@dataclass(frozen=True)
class Phrase:
    text: str  # normalised
    word_bounded: bool  # Latin phrases must start and end on a word boundary of the original text


@dataclass(frozen=True)
class ContentRule:
    rule_id: str
    kind: str  # "BANNED_CLAIM" or "MISSING_DISCLOSURE"
    description: str
    products: frozenset[ProductType]
    phrases: dict[str, tuple[Phrase, ...]]  # language -> phrases (banned) or keywords (disclosure)


@dataclass(frozen=True)
class RuleSet:
    version: str
    rules: tuple[ContentRule, ...]


@dataclass(frozen=True)
class Violation:
    kind: str
    rule_id: str
    start: int
    end: int
    description: str


def _keep(char: str) -> bool:
    """Letters, digits and marks count; spacing, punctuation, symbols and controls are ignored."""
    return unicodedata.category(char)[0] in "LNM"


def normalise(text: str) -> tuple[str, list[int]]:
    """The normalised text and, for each of its characters, the index of the original character."""
    chars: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        for out in unicodedata.normalize("NFKC", char).casefold():
            if _keep(out):
                chars.append(out)
                origin.append(index)
    return "".join(chars), origin


def _is_word_char(char: str) -> bool:
    folded = unicodedata.normalize("NFKC", char)
    return bool(folded) and folded[0].isascii() and folded[0].isalnum()


def _phrase(raw: str) -> Phrase:
    text, _ = normalise(raw)
    if not text:
        raise ValueError(f"content rules: phrase {raw!r} is empty after normalisation")
    return Phrase(text, text[0].isascii() and text[0].isalnum())


def load_rules(path: Path = RULES_FILE) -> RuleSet:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    rules: list[ContentRule] = []
    for section, kind, key in (("banned", "BANNED_CLAIM", "phrases"), ("disclosures", "MISSING_DISCLOSURE",
                                                                          "keywords")):
        for item in data.get(section, []):
            names = item["products"]
            products = frozenset(ProductType) if names == ["all"] else frozenset(ProductType(n) for n in names)
            phrases = {lang: tuple(_phrase(p) for p in item[key].get(lang, [])) for lang in LANGUAGES}
            rules.append(ContentRule(item["id"], kind, item["description"], products, phrases))
    return RuleSet(str(data["version"]), tuple(rules))


@cache
def default_rules() -> RuleSet:
    return load_rules()


def _occurrences(norm: str, origin: list[int], text: str, phrase: Phrase) -> Iterable[tuple[int, int]]:
    at = norm.find(phrase.text)
    while at >= 0:
        start, end = origin[at], origin[at + len(phrase.text) - 1] + 1
        if not phrase.word_bounded or (
            (start == 0 or not _is_word_char(text[start - 1])) and (end == len(text) or not _is_word_char(text[end]))
        ):
            yield start, end
        at = norm.find(phrase.text, at + 1)


def check(text: str, product_type: ProductType, language: str = "", rules: RuleSet | None = None) -> list[Violation]:
    """Every banned claim (by position; overlapping matches of one rule are merged to the longest) and every
    missing disclosure of `product_type`. `language` "zh" or "en" restricts the phrases; "" uses both."""
    rules = rules or default_rules()
    languages = (language,) if language else LANGUAGES
    norm, origin = normalise(text)
    found: list[Violation] = []
    missing: list[Violation] = []
    for rule in rules.rules:
        if product_type not in rule.products:
            continue
        spans = sorted(
            {span for lang in languages for phrase in rule.phrases[lang] for span in _occurrences(norm, origin, text,
                                                                                                    phrase)},
            key=lambda s: (s[0], -s[1]),
        )
        if rule.kind == "BANNED_CLAIM":
            last_end = -1
            for start, end in spans:
                if start < last_end:  # inside a longer match of the same rule ("稳赚" within "稳赚不赔")
                    continue
                found.append(Violation(rule.kind, rule.rule_id, start, end, rule.description))
                last_end = end
        elif not spans:
            missing.append(Violation(rule.kind, rule.rule_id, 0, 0, rule.description))
    found.sort(key=lambda v: (v.start, v.end, v.rule_id))
    return found + missing
