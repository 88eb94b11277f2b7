"""The README stays true: every RPC of every service and every service setting is in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.campaign.app import DEFINITION as CAMPAIGN
from services.gateway.app import DEFINITION as GATEWAY
from services.profile.app import DEFINITION as PROFILE
from services.risk.app import DEFINITION as RISK
from tests.fuzz.test_rpc_fuzz import all_rpcs

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("definition", [PROFILE, CAMPAIGN, RISK, GATEWAY], ids=lambda d: d.name)
def test_every_setting_of_every_service_is_documented(definition):
    missing = [name for name in definition.extra_settings if f"`{name}`" not in README]
    assert missing == [], f"add these {definition.name} settings to the README's environment table: {missing}"


def test_every_rpc_is_in_the_services_table():
    table = README[README.index("| service | owns |"):README.index("Every service also serves")]
    missing = []
    for rpc in all_rpcs():
        row = next((line for line in table.splitlines() if line.startswith(f"| **{rpc.service}**")), "")
        service = rpc.full_service.rsplit(".", 1)[-1]
        if not re.search(rf"`{service}`[^|]*?`{rpc.name}`", row):
            missing.append(f"{rpc.service}: {service}.{rpc.name}")
    assert missing == []
