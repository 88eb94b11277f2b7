"""The attribute registry's rules, without a database."""

import pytest

from services.platform.errors import InvalidArgument
from services.profile.domain import Attribute, AttributeSpec
from services.profile.registry import Registry, check_definitions, coerce_text, infer_column, looks_pii

REGISTRY = Registry([
    AttributeSpec("age", "integer", min="18", max="99"),
    AttributeSpec("income", "decimal", min="0"),
    AttributeSpec("vip", "boolean"),
    AttributeSpec("opened", "date", max="2030-12-31"),
    AttributeSpec("tier", "enum", allowed_values=("gold", "silver")),
    AttributeSpec("nickname", "string", pii=True),
    AttributeSpec("band", "enum", pii=True, allowed_values=("b-one", "b-two")),
])


@pytest.mark.parametrize(("name", "attribute", "reason"), [
    ("age", Attribute("int", 17), "VALUE_OUT_OF_RANGE"),
    ("age", Attribute("int", 100), "VALUE_OUT_OF_RANGE"),
    ("age", Attribute("decimal", "30"), "ATTRIBUTE_TYPE_MISMATCH"),
    ("income", Attribute("decimal", "-0.01"), "VALUE_OUT_OF_RANGE"),
    ("income", Attribute("string", "10"), "ATTRIBUTE_TYPE_MISMATCH"),
    ("vip", Attribute("int", 1), "ATTRIBUTE_TYPE_MISMATCH"),
    ("opened", Attribute("date", "2031-01-01"), "VALUE_OUT_OF_RANGE"),
    ("opened", Attribute("string", "2020-01-01"), "ATTRIBUTE_TYPE_MISMATCH"),
    ("tier", Attribute("string", "bronze"), "VALUE_NOT_ALLOWED"),
    ("tier", Attribute("int", 1), "ATTRIBUTE_TYPE_MISMATCH"),
    ("nickname", Attribute("bool", True), "ATTRIBUTE_TYPE_MISMATCH"),
    ("unknown", Attribute("string", "x"), "UNKNOWN_ATTRIBUTE"),
])
def test_each_type_rejects_what_it_must(name, attribute, reason):
    _, problems = REGISTRY.check({name: attribute})
    assert [(p.column, p.reason) for p in problems] == [(name, reason)]


def test_good_values_pass_and_are_normalised():
    good = {"age": Attribute("int", 18), "income": Attribute("int", 5), "vip": Attribute("bool", False),
            "opened": Attribute("date", "2030-12-31"), "tier": Attribute("string", "gold"),
            "nickname": Attribute("string", "x"), "band": Attribute("string", "b-one")}
    out, problems = REGISTRY.check(good)
    assert problems == [] and out["income"] == Attribute("decimal", "5")


def test_an_empty_registry_is_not_strict():
    assert Registry([]).check({"anything": Attribute("string", "x")}) == ({"anything": Attribute("string", "x")}, [])


def test_pii_values_and_allowed_values_are_never_in_descriptions():
    _, problems = REGISTRY.check({"band": Attribute("string", "SECRET-1"), "tier": Attribute("string", "OPEN-1")})
    by = {p.column: p.description for p in problems}
    assert "SECRET-1" not in by["band"] and "b-one" not in by["band"]
    assert "OPEN-1" in by["tier"] and "gold" in by["tier"]


def test_check_or_raise_names_the_field_and_reason():
    with pytest.raises(InvalidArgument) as caught:
        REGISTRY.check_or_raise({"age": Attribute("int", 5)})
    assert caught.value.reason == "VALUE_OUT_OF_RANGE"
    assert caught.value.violations[0].field == "customer.attributes['age']"


@pytest.mark.parametrize(("spec", "field"), [
    (AttributeSpec("Age", "integer"), "attributes[0].name"),
    (AttributeSpec("x", "enum"), "attributes[0].allowed_values"),
    (AttributeSpec("x", "enum", allowed_values=("a", "a")), "attributes[0].allowed_values"),
    (AttributeSpec("x", "boolean", min="1"), "attributes[0].min"),
    (AttributeSpec("x", "date", min="2020-13-01"), "attributes[0].min"),
    (AttributeSpec("x", "decimal", min="2", max="1"), "attributes[0].min"),
])
def test_bad_definitions(spec, field):
    with pytest.raises(InvalidArgument) as caught:
        check_definitions([spec])
    assert caught.value.reason == "INVALID_ATTRIBUTE_DEFINITION"
    assert caught.value.violations[0].field == field


def test_duplicate_names_in_one_request():
    with pytest.raises(InvalidArgument) as caught:
        check_definitions([AttributeSpec("x", "string"), AttributeSpec("x", "integer")])
    assert caught.value.violations[0].field == "attributes[1].name"


@pytest.mark.parametrize(("kind", "text", "expected"), [
    ("integer", "-12", Attribute("int", -12)),
    ("integer", "1.5", Attribute("string", "1.5")),
    ("decimal", "1e3", Attribute("decimal", "1e3")),
    ("boolean", "Yes", Attribute("bool", True)),
    ("boolean", "0", Attribute("bool", False)),
    ("date", "2020-01-02", Attribute("date", "2020-01-02")),
    ("enum", "x", Attribute("string", "x")),
])
def test_coerce_text(kind, text, expected):
    assert coerce_text(kind, text) == expected


@pytest.mark.parametrize(("name", "values", "expected"), [
    ("age", ["1", "22", "", None], {"type": "integer", "pii": False}),
    ("account_code", ["007", "123"], {"type": "string", "pii": False}),
    ("ratio", ["1.5", "2", "-0.25"], {"type": "decimal", "pii": False}),
    ("flag", ["yes", "no", "YES"], {"type": "boolean", "pii": False}),
    ("when", ["2020-01-01", "2021-12-31"], {"type": "date", "pii": False}),
    ("colour", ["red", "blue", "red", "red"], {"type": "enum", "pii": False, "allowed_values": ["blue", "red"]}),
    ("comment", ["a", "b", "c"], {"type": "string", "pii": False}),
    ("email_address", ["a@b.cn", "a@b.cn", "a@b.cn"], {"type": "string", "pii": True}),
    ("mobile_phone", ["13800138000", "13900139000"], {"type": "string", "pii": True}),
])
def test_infer_column(name, values, expected):
    assert infer_column(name, values) == expected


@pytest.mark.parametrize(("name", "pii"), [
    ("full_name", True), ("customer_name", True), ("id_number", True), ("home_address", True),
    ("phone", True), ("date_of_birth", True), ("balance", False), ("job", False), ("campaign", False),
])
def test_pii_guess_by_column_name(name, pii):
    assert looks_pii(name) is pii
