"""Field-level encryption at rest of the attribute values the registry flags as PII (docs/pii.md).

Envelope encryption:
- every customer with PII gets a random 256-bit *data key* (`customer_keys`: one row per customer, its own table so
  that it can be backed up apart from the data and destroyed alone), stored *wrapped* (AES-256-GCM) under a
  *master key* from the environment: `PROFILE_PII_KEYS` = `key-id:base64,key-id:base64` (newest first) or the path
  of a file holding the same (a Kubernetes Secret mounted as a file). The wrapped key carries its master key id.
- each PII attribute value is encrypted on its own with AES-256-GCM under the customer's data key, with the
  customer id and the attribute name as associated data (a ciphertext moved to another customer or attribute does
  not decrypt); the token stored in `customers.pii` carries the data key's id: `<data-key-id>.<base64(nonce|ct)>`.
- `rotate_keys` rewraps every data key under the newest master key (resumable; the values are not touched);
  `destroy_customer_key` deletes a customer's data key: its PII can never be decrypted again (crypto-shredding).

Nothing here logs or raises with a key, a plaintext or a customer id (only `customer_token`s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.config import ConfigError, ServiceSettings
from services.platform.db import Database, utcnow
from services.platform.errors import Internal
from services.platform.logs import configure_logging
from services.platform.masking import customer_token
from services.platform.server import ServiceDefinition, StartupError

log = logging.getLogger("lodestar.profile.pii")

KEYS_ENV = "PROFILE_PII_KEYS"
# "true": refuse to start without PROFILE_PII_KEYS even outside Kubernetes (inside, keys are always required).
REQUIRE_KEYS_ENV = "PROFILE_PII_REQUIRE_KEYS"
DEV_KEY_FILE_NAME = "profile-pii-dev.keys"
KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_WRAP_AAD = b"lodestar.profile.pii.data-key\0"


class PiiKeyError(Internal):
    """A ciphertext or a wrapped key cannot be opened: unknown key id, destroyed key or tampered data. Reaching a
    caller, it is INTERNAL (PII_KEY_UNAVAILABLE): a master key missing from PROFILE_PII_KEYS is a deployment fault."""

    def __init__(self, message: str) -> None:
        super().__init__("PII_KEY_UNAVAILABLE", message)


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    aead: AESGCM = field(repr=False, compare=False)


@dataclass(frozen=True)
class Keyring:
    """The master keys, newest first: the first wraps new data keys, every one unwraps."""

    keys: tuple[MasterKey, ...]
    dev: bool = False

    @property
    def newest(self) -> MasterKey:
        return self.keys[0]

    def get(self, key_id: str) -> MasterKey:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        raise PiiKeyError(f"master key {key_id!r} is not in {KEYS_ENV}")

    @classmethod
    def parse(cls, text: str, *, dev: bool = False) -> Keyring:
        """`id:base64[,id:base64...]` (commas, whitespace or newlines between; '#' starts a comment line)."""
        entries = [e for line in text.splitlines() if not line.strip().startswith("#")
                   for e in re.split(r"[,\s]+", line) if e]
        if not entries:
            raise ConfigError(f"{KEYS_ENV} holds no key (expected key-id:base64 pairs, newest first)")
        keys: list[MasterKey] = []
        for n, entry in enumerate(entries, 1):
            key_id, sep, encoded = entry.partition(":")
            if not sep or not _KEY_ID.match(key_id):
                raise ConfigError(f"{KEYS_ENV}: entry {n} is not key-id:base64 (ids are letters, digits, '_', '-')")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{KEYS_ENV}: key {key_id!r} is not valid base64") from None
            if len(raw) != KEY_BYTES:
                raise ConfigError(f"{KEYS_ENV}: key {key_id!r} must be {KEY_BYTES} bytes (AES-256), got {len(raw)}")
            if any(k.key_id == key_id for k in keys):
                raise ConfigError(f"{KEYS_ENV}: key id {key_id!r} appears twice")
            keys.append(MasterKey(key_id, AESGCM(raw)))
        return cls(tuple(keys), dev=dev)

    # -- data keys --

    def wrap(self, customer_id: str, data_key: bytes, nonce: bytes | None = None) -> tuple[str, bytes]:
        """(master key id, nonce|wrapped key) of a data key, bound to its customer."""
        master = self.newest
        nonce = nonce or os.urandom(NONCE_BYTES)
        return master.key_id, nonce + master.aead.encrypt(nonce, data_key, _WRAP_AAD + customer_id.encode())

    def unwrap(self, customer_id: str, master_key_id: str, wrapped: bytes) -> bytes:
        master = self.get(master_key_id)
        try:
            return master.aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_AAD + customer_id.encode())
        except InvalidTag:
            raise PiiKeyError("a data key does not open under its master key") from None


def generate_master_key() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def require_keys(env: Mapping[str, str]) -> bool:
    """Keys are required in Kubernetes (KUBERNETES_SERVICE_HOST is set in every pod) or when asked to."""
    return bool(env.get("KUBERNETES_SERVICE_HOST", "").strip()) or env.get(REQUIRE_KEYS_ENV, "").strip().lower() in {
        "1", "true", "yes", "on"}


def _dev_key_file(env: Mapping[str, str], database_url: str) -> Path:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).with_name(Path(url.database).stem + "." + DEV_KEY_FILE_NAME)
    return Path(env.get("DATA_DIR", "").strip() or "var/data") / DEV_KEY_FILE_NAME


def load_keyring(env: Mapping[str, str], database_url: str) -> Keyring:
    """The master keys from PROFILE_PII_KEYS (the keys, or the path of a file holding them).

    Without it: a ConfigError when keys are required (Kubernetes, PROFILE_PII_REQUIRE_KEYS); otherwise a development
    key, generated once and kept in a file beside the database, with a loud warning."""
    raw = env.get(KEYS_ENV, "").strip()
    if raw:
        candidate = Path(raw)
        if ":" not in raw or raw.startswith(("/", "./")):
            try:
                raw = candidate.read_text(encoding="utf-8")
            except OSError:
                raise ConfigError(f"{KEYS_ENV} names a file that cannot be read: {candidate}") from None
        return Keyring.parse(raw)
    if require_keys(env):
        raise ConfigError(f"{KEYS_ENV} is required in production (PII is encrypted at rest): set it to "
                          "key-id:base64 pairs (32-byte keys, newest first) or the path of a mounted Secret file")
    path = _dev_key_file(env, database_url)
    if not path.exists():
        # Written whole under a temporary name, then linked into place: a service starting at the same time
        # either wins or reads the winner's complete file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(f"# DEVELOPMENT ONLY: generated by the profile service\ndev1:{generate_master_key()}\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        except OSError as error:
            raise ConfigError(f"{KEYS_ENV} is not set and the development key file {path} cannot be created: "
                              f"{error.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    keyring = Keyring.parse(path.read_text(encoding="utf-8"), dev=True)
    log.warning("PII ENCRYPTION USES A GENERATED DEVELOPMENT KEY: set PROFILE_PII_KEYS in production",
                extra={"key_file": str(path)})
    return keyring


# Settings the profile service reads for PII encryption (ServiceDefinition.extra_settings).
PII_SETTINGS = (KEYS_ENV, REQUIRE_KEYS_ENV, "KUBERNETES_SERVICE_HOST", "DATA_DIR")


def pii_keyring(settings: ServiceSettings) -> Keyring:
    """The keyring the service starts with; StartupError (a clear message, no traceback) when it cannot."""
    try:
        return load_keyring(settings.extra, settings.database_url)
    except ConfigError as error:
        raise StartupError(str(error)) from None


# -- values --------------------------------------------------------------------------------------------------------

def _aad(customer_id: str, name: str) -> bytes:
    return f"{customer_id}\0{name}".encode()


@dataclass
class DataKey:
    key_id: str
    aead: AESGCM


class PiiCipher:
    """Encrypts and decrypts one customer's attribute values under its data key."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @staticmethod
    def aead(raw: bytes) -> AESGCM:
        return AESGCM(raw)

    @staticmethod
    def new_data_keys(customer_ids: Sequence[str], keyring: Keyring) -> list[tuple[str, str, str, bytes, bytes]]:
        """Fresh data keys: (customer_id, key_id, master_key_id, wrapped, raw key) for each id."""
        n = len(customer_ids)
        material = os.urandom(KEY_BYTES * n)
        nonces = os.urandom(NONCE_BYTES * n)
        ids = secrets.token_hex(4 * n)
        master = keyring.newest
        out = []
        for i, customer_id in enumerate(customer_ids):
            raw = material[i * KEY_BYTES:(i + 1) * KEY_BYTES]
            nonce = nonces[i * NONCE_BYTES:(i + 1) * NONCE_BYTES]
            wrapped = nonce + master.aead.encrypt(nonce, raw, _WRAP_AAD + customer_id.encode())
            out.append((customer_id, ids[i * 8:(i + 1) * 8], master.key_id, wrapped, raw))
        return out

    @staticmethod
    def seal_many(customer_id: str, key: DataKey, plaintexts: Iterable[tuple[str, str]],
                  nonces: bytes, offset: int = 0) -> dict[str, str]:
        """{name: token} of (name, plaintext JSON of {"t", "v"}) pairs; nonces[offset:] gives fresh nonces."""
        out = {}
        b64 = base64.b64encode
        for name, text in plaintexts:
            nonce = nonces[offset:offset + NONCE_BYTES]
            offset += NONCE_BYTES
            out[name] = key.key_id + "." + b64(nonce + key.aead.encrypt(nonce, text.encode(), _aad(customer_id,
                                                                                                    name))).decode()
        return out

    @staticmethod
    def open(customer_id: str, key: DataKey | None, name: str, token: str) -> Any:
        """The stored {"t", "v"} of one value; PiiKeyError when it cannot be opened."""
        key_id, _, body = token.partition(".")
        if key is None or key_id != key.key_id:
            raise PiiKeyError("the value's data key is not this customer's (destroyed or replaced)")
        try:
            blob = base64.b64decode(body)
            text = key.aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(customer_id, name))
        except (InvalidTag, binascii.Error, ValueError):
            raise PiiKeyError("a PII value does not decrypt") from None
        return json.loads(text)


def plaintext(kind: str, value: Any) -> str:
    """The encrypted form of a value: the stored attribute JSON {"t": kind, "v": value}."""
    return json.dumps({"t": kind, "v": value})


# -- keys in the database ------------------------------------------------------------------------------------------

async def destroy_customer_key(session: AsyncSession, customer_id: str) -> bool:
    """Crypto-shredding: deletes the customer's data key and its PII ciphertexts, in the caller's transaction.

    After the commit, the customer's PII attribute values can never be decrypted again: not from this database,
    and not from a backup of `customers` taken earlier, once the backups of `customer_keys` older than this call
    are gone (docs/pii.md: the key table is backed up apart, with a short retention). Returns whether a key
    existed. Idempotent; the customer row itself is left to the caller (erase or pseudonymise)."""
    from services.profile.db import CustomerKeyRow, CustomerRow  # db imports this module

    result = await session.execute(delete(CustomerKeyRow).where(CustomerKeyRow.customer_id == customer_id))
    await session.execute(update(CustomerRow).where(CustomerRow.customer_id == customer_id).values(pii=None))
    destroyed = bool(getattr(result, "rowcount", 0))
    log.info("customer data key destroyed", extra={"customer": customer_token(customer_id), "existed": destroyed})
    return destroyed


@dataclass
class RotationReport:
    scanned: int = 0
    rewrapped: int = 0
    batches: int = 0
    done: bool = False


async def rotate_keys(database: Database, keyring: Keyring, *, batch_size: int = 1000,
                      max_batches: int | None = None, after: str | None = None,
                      progress: Callable[[int], object] | None = None) -> RotationReport:
    """Rewraps every data key not under the newest master key, a batch per transaction, in customer_id order.

    Resumable: an interrupted run leaves each key wrapped under one master key or the other (both in
    PROFILE_PII_KEYS during a rotation), and a new run skips what is already rewrapped. `max_batches` stops early
    (report.done False); `after` starts after that customer id."""
    from services.profile.db import CustomerKeyRow  # db imports this module

    report = RotationReport()
    newest = keyring.newest
    cursor = after
    while max_batches is None or report.batches < max_batches:
        table: Table = CustomerKeyRow.__table__  # type: ignore[assignment]
        async with database.sessionmaker() as session, session.begin():
            query = (select(table.c.customer_id, table.c.key_id, table.c.master_key_id, table.c.wrapped_key)
                     .order_by(table.c.customer_id).limit(batch_size))
            if cursor is not None:
                query = query.where(table.c.customer_id > cursor)
            rows = list(await session.execute(query))
            if not rows:
                report.done = True
                break
            now = utcnow()
            for customer_id, key_id, master_key_id, wrapped in rows:
                if master_key_id == newest.key_id:
                    continue
                raw = keyring.unwrap(customer_id, master_key_id, bytes(wrapped))
                new_master, new_wrapped = keyring.wrap(customer_id, raw)
                # Only the key that was read: one destroyed (or rewrapped) meanwhile is left as it is.
                result = await session.execute(
                    update(table).where(table.c.customer_id == customer_id, table.c.key_id == key_id,
                                        table.c.master_key_id == master_key_id)
                    .values(master_key_id=new_master, wrapped_key=new_wrapped, update_time=now))
                report.rewrapped += int(getattr(result, "rowcount", 0) or 0)
            report.scanned += len(rows)
            report.batches += 1
            cursor = rows[-1][0]
        if progress is not None:
            progress(len(rows))
        if len(rows) < batch_size:
            report.done = True
            break
    log.info("data keys rewrapped", extra={"master_key_id": newest.key_id, "scanned": report.scanned,
                                           "rewrapped": report.rewrapped, "done": report.done})
    return report


def rotate_keys_main(definition: ServiceDefinition, argv: list[str] | None = None) -> int:
    """`python -m services.profile rotate-keys [--batch-size N] [--max-batches N] [--json]`: rewraps every data key
    under the newest key of PROFILE_PII_KEYS. Exit 0 when done, 3 when stopped by --max-batches (run it again)."""
    parser = argparse.ArgumentParser(prog="python -m services.profile rotate-keys",
                                     description="rewrap every customer data key under the newest master key")
    parser.add_argument("--batch-size", type=int, default=1000, help="keys per transaction (default 1000)")
    parser.add_argument("--max-batches", type=int, default=None, help="stop after N batches (resume later)")
    parser.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    args = parser.parse_args(argv)
    from services.profile.db import CustomerKeyRow  # db imports this module

    if not 1 <= args.batch_size <= 100_000:
        parser.error("--batch-size must be 1 to 100000")
    try:
        settings = definition.settings_from_env(dict(os.environ))
        configure_logging(definition.name, settings.log_level)
        keyring = load_keyring(settings.extra, settings.database_url)
    except ConfigError as error:
        print(f"{definition.name}: configuration error: {error}", file=sys.stderr)
        return 2

    async def run() -> RotationReport:
        from tqdm import tqdm

        database = Database.from_url(settings.database_url)
        try:
            async with database.sessionmaker() as session:
                total = await session.scalar(select(func.count()).select_from(CustomerKeyRow.__table__))
            bar = tqdm(total=total, unit="keys", file=sys.stderr, desc="rewrapping",
                       disable=args.json or not sys.stderr.isatty())
            try:
                return await rotate_keys(database, keyring, batch_size=args.batch_size,
                                         max_batches=args.max_batches, progress=bar.update)
            finally:
                bar.close()
        finally:
            await database.dispose()

    try:
        report = asyncio.run(run())
    except PiiKeyError as error:
        print(f"{definition.name}: rotate-keys: {error}", file=sys.stderr)
        return 1
    data = {"master_key_id": keyring.newest.key_id, "scanned": report.scanned, "rewrapped": report.rewrapped,
            "batches": report.batches, "done": report.done}
    if args.json:
        print(json.dumps(data))
    else:
        print(f"rewrapped {report.rewrapped} of {report.scanned} data keys under {keyring.newest.key_id}"
              + ("" if report.done else " (stopped early: run again to continue)"))
    return 0 if report.done else 3
