"""`lodestar delivery stats|dead-letters|requeue` against a real campaign service whose dispatcher has run."""

import asyncio
import io
import json

import pytest

from lodestar_cli.main import run
from services.campaign.dispatch import DEAD, SENT
from tests.integration.test_dispatch import LAUNCH, Contacts, deliveries, dispatcher, seed, sim, sms_adapter, svc

__all__ = ["sim", "svc"]  # fixtures


async def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def dispatched(svc, sim, monkeypatch):
    monkeypatch.setenv("CAMPAIGN_SERVICE_ADDR", svc.address)
    await seed(svc, 3)
    contacts = Contacts()
    contacts.missing.add("c00002")
    d = dispatcher(svc, sms_adapter(sim), contacts=contacts)
    await d.run_until_idle()
    return d


async def test_stats_dead_letters_and_requeue(svc, dispatched):
    code, out, _ = await cli("delivery", "stats", LAUNCH, "--json")
    assert code == 0
    counts = json.loads(out)["stats"]["counts"]
    assert (counts["total"], counts["sent"], counts["dead"]) == ("3", "2", "1")  # int64 as JSON strings

    code, out, _ = await cli("delivery", "stats", f"launches/{LAUNCH}")
    assert code == 0 and "CUSTOMER_NOT_FOUND: 1" in out and out.splitlines()[0] == f"launches/{LAUNCH}"

    code, out, _ = await cli("delivery", "stats", "spring", "--json")  # by campaign id
    assert code == 0 and json.loads(out)["stats"]["launch"] == f"launches/{LAUNCH}"

    code, out, _ = await cli("delivery", "dead-letters", "--channel", "sms", "--json")
    dead = json.loads(out)["deliveries"]
    assert code == 0 and [(d["delivery_key"], d["last_reason"]) for d in dead] == [
        (f"{LAUNCH}:c00002", "CUSTOMER_NOT_FOUND")]

    code, out, _ = await cli("delivery", "requeue", f"{LAUNCH}:c00002", "--actor", "ops-1", "--json")
    assert code == 0 and json.loads(out)["delivery"]["state"] == "DELIVERY_STATE_QUEUED"
    assert (await deliveries(svc))[f"{LAUNCH}:c00002"].state not in (DEAD, SENT)

    code, out, _ = await cli("delivery", "requeue", f"{LAUNCH}:c00002", "--actor", "ops-1", "--json")
    error = json.loads(out)["error"]
    assert (code, error["code"], error["reason"]) == (1, "FAILED_PRECONDITION", "DELIVERY_NOT_DEAD")

    code, out, _ = await cli("delivery", "stats", "launches/" + "b" * 32, "--json")
    assert (code, json.loads(out)["error"]["reason"]) == (1, "LAUNCH_NOT_FOUND")
