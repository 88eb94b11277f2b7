# ruff: noqa: RUF001  (full-width characters are the point of these tests)
"""Content compliance: normalisation, hidden and full-width phrases, positions in the original text."""

from __future__ import annotations

import pytest

from services.risk import content
from services.risk.domain import ProductType

W, C, D = ProductType.WEALTH, ProductType.CREDIT_CARD, ProductType.DEPOSIT
WEALTH_OK = " 投资有风险，过往业绩不代表未来表现。"


def banned(text: str, product: ProductType = W, language: str = "") -> list[tuple[str, str]]:
    return [(v.rule_id, text[v.start:v.end]) for v in content.check(text, product, language)
            if v.kind == "BANNED_CLAIM"]


@pytest.mark.parametrize(("text", "rule", "matched"), [
    ("保本理财", "banned.principal-guaranteed", "保本"),
    ("绝对 保 本！", "banned.principal-guaranteed", "保 本"),
    ("稳赚不赔", "banned.guaranteed-return", "稳赚不赔"),
    ("零-风-险", "banned.no-risk", "零-风-险"),
    ("It is RISK-FREE.", "banned.no-risk", "RISK-FREE"),
    ("ｒｉｓｋ－ｆｒｅｅ", "banned.no-risk", "ｒｉｓｋ－ｆｒｅｅ"),
    ("Ｇｕａｒａｎｔｅｅｄ Ｒｅｔｕｒｎ", "banned.guaranteed-return", "Ｇｕａｒａｎｔｅｅｄ Ｒｅｔｕｒｎ"),
    ("a g u a r a n t e e d  r e t u r n!", "banned.guaranteed-return", "g u a r a n t e e d  r e t u r n"),
    ("you can't lose", "banned.guaranteed-return", "can't lose"),
    ("No. Risk.", "banned.no-risk", "No. Risk"),
])
def test_banned_claims_are_found_after_normalisation(text: str, rule: str, matched: str) -> None:
    assert banned(text + WEALTH_OK) == [(rule, matched)]


def test_positions_are_offsets_in_the_original_text() -> None:
    text = "前缀ＡＢ 保 本 and risk free" + WEALTH_OK
    found = [v for v in content.check(text, W) if v.kind == "BANNED_CLAIM"]
    assert [(v.start, v.end) for v in found] == [(5, 8), (13, 22)]


def test_latin_phrases_respect_word_boundaries() -> None:
    assert banned("casino risk is a thing" + WEALTH_OK) == []
    assert banned("norisk!" + WEALTH_OK) == [("banned.no-risk", "norisk")]  # spacing removed: still hidden
    assert banned("unguaranteed returns" + WEALTH_OK) == []


def test_rules_apply_per_product_type_and_language() -> None:
    assert banned("保本存款，受存款保险保护", D) == []  # principal protection is true of deposits
    assert banned("保本", W, language="en") == []
    assert banned("保本", W, language="zh") == [("banned.principal-guaranteed", "保本")]


def test_missing_disclosures_per_product_type() -> None:
    def missing(text: str, product: ProductType) -> list[str]:
        return [v.rule_id for v in content.check(text, product) if v.kind == "MISSING_DISCLOSURE"]

    assert missing("Apply now", C) == ["disclosure.apr", "disclosure.fees"]
    assert missing("年化利率 12%，手续费 1%", C) == []
    assert missing("Annualized rate 9.9%; fees apply", C) == []
    assert missing("New fund", W) == ["disclosure.risk-statement", "disclosure.past-performance"]
    assert missing("Investments involve risk. Past performance is no guide.", W) == []
    assert missing("3-year deposit", D) == ["disclosure.deposit-insurance"]
    assert missing("Coffee for all", C)[1:] == ["disclosure.fees"]  # "coffee" does not disclose a fee


def test_normalise_maps_every_character_back() -> None:
    norm, origin = content.normalise("Ａ b-Ｃ")
    assert norm == "abc" and origin == [0, 2, 4]


def test_rules_file_has_a_version_and_both_languages() -> None:
    rules = content.default_rules()
    assert rules.version == "2026.12-1"
    assert all(rule.phrases["zh"] and rule.phrases["en"] for rule in rules.rules)
