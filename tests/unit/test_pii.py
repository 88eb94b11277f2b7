"""PII encryption primitives (services/profile/pii.py): master keys from the environment, data keys, values."""

import base64
import os
import stat

import pytest

from services.platform.config import ConfigError
from services.profile.pii import (
    DataKey,
    Keyring,
    PiiCipher,
    PiiKeyError,
    generate_master_key,
    load_keyring,
    plaintext,
)
from services.profile.registry import Registry


def key(n: int = 1) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def test_keys_parse_newest_first_with_commas_newlines_and_comments():
    ring = Keyring.parse(f"# rotated 2026-11\nk2:{key(2)},\n k1:{key(1)}\n")
    assert [k.key_id for k in ring.keys] == ["k2", "k1"]
    assert ring.newest.key_id == "k2" and not ring.dev


@pytest.mark.parametrize(("text", "needle"), [
    ("", "holds no key"),
    ("k1", "entry 1 is not key-id:base64"),
    (f"bad id:{key()}", "is not key-id:base64"),
    ("k1:%%%", "not valid base64"),
    ("k1:" + base64.b64encode(b"short").decode(), "must be 32 bytes"),
    (f"k1:{key(1)},k1:{key(2)}", "appears twice"),
])
def test_malformed_keys_are_a_config_error_that_never_echoes_key_material(text, needle):
    with pytest.raises(ConfigError) as caught:
        Keyring.parse(text)
    assert needle in str(caught.value)
    assert key(1) not in str(caught.value) and key(2) not in str(caught.value)


def test_keys_come_from_the_variable_or_from_a_mounted_file(tmp_path):
    assert load_keyring({"PROFILE_PII_KEYS": f"a:{key(1)}"}, "sqlite:///x.db").newest.key_id == "a"
    secret = tmp_path / "pii-keys"
    secret.write_text(f"b:{key(2)}\na:{key(1)}\n")
    ring = load_keyring({"PROFILE_PII_KEYS": str(secret)}, "sqlite:///x.db")
    assert [k.key_id for k in ring.keys] == ["b", "a"]
    with pytest.raises(ConfigError, match="cannot be read"):
        load_keyring({"PROFILE_PII_KEYS": str(tmp_path / "missing")}, "sqlite:///x.db")


@pytest.mark.parametrize("env", [{"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, {"PROFILE_PII_REQUIRE_KEYS": "true"}])
def test_production_without_keys_is_refused(env, tmp_path):
    with pytest.raises(ConfigError, match="PROFILE_PII_KEYS is required in production"):
        load_keyring(env, f"sqlite:///{tmp_path / 'p.db'}")
    assert list(tmp_path.iterdir()) == []  # no development key was made


def test_development_key_is_generated_once_beside_the_database_and_private(tmp_path, caplog):
    url = f"sqlite+aiosqlite:///{tmp_path / 'profile.db'}"
    first = load_keyring({}, url)
    second = load_keyring({}, url)
    path = tmp_path / "profile.profile-pii-dev.keys"
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.dev and first.newest.key_id == "dev1"
    # The same key both times: data written before a restart still decrypts.
    key_id, wrapped = first.wrap("c-1", b"k" * 32)
    assert second.unwrap("c-1", key_id, wrapped) == b"k" * 32
    assert "GENERATED DEVELOPMENT KEY" in caplog.text


def test_wrapped_data_keys_are_bound_to_their_customer_and_master_key():
    old, new = Keyring.parse(f"k1:{key(1)}"), Keyring.parse(f"k2:{key(2)},k1:{key(1)}")
    master_id, wrapped = old.wrap("c-1", b"d" * 32)
    assert master_id == "k1"
    assert new.unwrap("c-1", "k1", wrapped) == b"d" * 32  # an older key still unwraps
    assert new.wrap("c-1", b"d" * 32)[0] == "k2"  # the newest wraps
    with pytest.raises(PiiKeyError):
        new.unwrap("c-2", "k1", wrapped)  # another customer's slot
    with pytest.raises(PiiKeyError, match="not in PROFILE_PII_KEYS"):
        Keyring.parse(f"k2:{key(2)}").unwrap("c-1", "k1", wrapped)


def test_values_are_sealed_per_customer_and_attribute_and_carry_the_key_id():
    ring = Keyring.parse(f"k1:{key(1)}")
    (cid, key_id, master_id, wrapped, raw), = PiiCipher.new_data_keys(["c-1"], ring)
    assert (cid, master_id, len(key_id)) == ("c-1", "k1", 8)
    assert ring.unwrap("c-1", master_id, wrapped) == raw
    data_key = DataKey(key_id, PiiCipher.aead(raw))
    secret = "110101199003077777"
    tokens = PiiCipher.seal_many("c-1", data_key, [("id_number", plaintext("string", secret))], os.urandom(12))
    token = tokens["id_number"]
    assert token.startswith(key_id + ".") and secret not in token
    assert PiiCipher.open("c-1", data_key, "id_number", token) == {"t": "string", "v": secret}
    for customer, name in (("c-2", "id_number"), ("c-1", "phone_alt")):  # moved to another slot: refused
        with pytest.raises(PiiKeyError):
            PiiCipher.open(customer, data_key, name, token)
    other = DataKey("ffffffff", PiiCipher.aead(os.urandom(32)))
    with pytest.raises(PiiKeyError, match="not this customer's"):
        PiiCipher.open("c-1", other, "id_number", token)  # a destroyed and replaced key
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(PiiKeyError):
        PiiCipher.open("c-1", data_key, "id_number", tampered)


def test_the_registry_names_its_pii_attributes():
    from services.profile.domain import AttributeSpec

    registry = Registry([AttributeSpec(name="age", type="integer"), AttributeSpec(name="mobile", type="string",
                                                                                  pii=True)])
    assert registry.pii_names == frozenset({"mobile"})


def test_generated_master_keys_parse():
    assert Keyring.parse(f"new:{generate_master_key()}").newest.key_id == "new"
