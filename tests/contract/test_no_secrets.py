"""No secrets in the repository: every tracked file is scanned for key material and credential shapes."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
    "Lodestar partner API key": re.compile(r"\blsk_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{32}\b"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    # A URL carrying a password (user:password@host) other than obvious placeholders.
    "password in a URL": re.compile(r"://[^/\s:@'\"]+:(?!\$\{|<|\*|password@|pw@|secret@|\{)[^/\s@'\"]{6,}@"),
}


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("git ls-files failed: the secrets scan needs the repository's file list")
    return [ROOT / name for name in out.stdout.decode().split("\0") if name]


def test_patterns_catch_what_they_should():
    sample = "\n".join(["-----BEGIN RSA PRIVATE KEY-----", "lsk_AbCdEf123456_" + "x" * 32,
                        "AKIA" + "A" * 16, "postgresql://app:s3cr3tpass@db:5432/x"])
    assert {name for name, p in PATTERNS.items() if p.search(sample)} == {
        "private key", "Lodestar partner API key", "AWS access key", "password in a URL"}
    assert not PATTERNS["password in a URL"].search("postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def test_no_tracked_file_holds_a_secret():
    findings = []
    files = tracked_files()
    assert files, "no tracked files found"
    for path in files:
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for name, pattern in PATTERNS.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                findings.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    # This file's own patterns and samples are the only allowed matches.
    findings = [f for f in findings if not f.startswith("tests/contract/test_no_secrets.py")]
    assert findings == [], "secrets in the repository:\n" + "\n".join(findings)
