"""Batch decision records written before the columnar format (version 1: zlib-compressed JSON, the allocation's
document by customer id; partitions' results in a separate blob) are still read: GetDecision assembles the same
record, and the allocation's reader (launch.partition_results) takes the documents, or the blob where a
partition has no document."""

import json
import zlib
from datetime import UTC, datetime

import numpy as np
import pytest

from lodestar.campaign.v1 import campaign_service_pb2 as pb
from lodestar.common.v1 import common_pb2 as c
from services.campaign.db import BatchDecisionRow, CampaignUnitOfWork, LaunchPartitionRow, LaunchRow
from services.campaign.launch import PartitionResult, partition_results
from services.campaign.service import snapshot_hash
from tests.integration.test_campaign_launch import add_campaign, stub, svc  # noqa: F401 - fixtures

WHEN = datetime(2026, 11, 20, 9, tzinfo=UTC)
SNAPSHOTS = [{"attributes": {"income": 5000.0}, "region": "CN-31", "time_zone": "Asia/Shanghai", "age": 40,
              "decision_time": WHEN.isoformat()},
             {"attributes": {}, "region": "", "time_zone": "", "age": None, "decision_time": WHEN.isoformat()}]


def v1(document):
    return zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 6)


@pytest.fixture
async def legacy(svc):  # noqa: F811 - the fixture imported above
    await add_campaign(svc)
    partition = {
        "v": 1, "launch_id": "old1", "campaign_id": "spring", "contact_time": WHEN.isoformat(),
        "policy_version": "policy-3", "offers": ["deposit"], "terms": [[80.0, 0.5]], "channels": [c.CHANNEL_SMS],
        "models": ["heuristic-v1"], "bases": ["propensity"], "ids": ["c1", "c2"], "groups": [0, -1],
        "group_probability": [0.9, 0.1], "probability": [[0.25], [0.125]], "verdicts": [[1], [1]],
        "reasons": [[0], [0]], "reason_sets": [""], "snapshots": SNAPSHOTS,
        "snapshot_hash": [snapshot_hash(s) for s in SNAPSHOTS]}
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        uow.session.add(LaunchRow(launch_id="old1", campaign_id="spring", state="DONE", actor="ops", as_of=WHEN,
                                  contact_time=WHEN, fields=[], counts={}, report={}, done_time=WHEN))
        await uow.session.flush()  # the partitions refer to it
        uow.session.add(LaunchPartitionRow(launch_id="old1", number=1, first_id="c1", last_id="c2", size=2,
                                           state="DONE", counts={}, results=None))
        uow.session.add(BatchDecisionRow(launch_id="old1", number=1, first_id="c1", last_id="c2",
                                         records=v1(partition)))
        uow.session.add(BatchDecisionRow(launch_id="old1", number=0, records=v1(
            {"v": 1, "ids": ["c1"], "chosen": [0], "cut": [""]})))
        # A partition from before decision records: its results blob only.
        blob = PartitionResult(np.array(["c3"]), np.array([0], dtype=np.int16), np.array(["c3"]),
                               np.array([[12.0]]), np.array([[0.15625]])).to_blob()
        uow.session.add(LaunchPartitionRow(launch_id="old1", number=2, first_id="c3", last_id="c3", size=1,
                                           state="DONE", counts={}, results=blob))
        await uow.commit()
    return svc


async def test_a_version_1_record_reads_as_it_was_written(legacy, stub):  # noqa: F811 - the fixture
    record = (await stub.GetDecision(pb.GetDecisionRequest(name="decisions/old1:c1"))).decision
    assert record.context.placement == "launch:old1 ALLOCATED" and record.policy_version == "policy-3"
    [candidate] = record.candidates
    assert (candidate.offer_id, candidate.rank, candidate.probability) == ("deposit", 1, pytest.approx(0.25))
    assert candidate.expected_value == pytest.approx(0.25 * 80.0 - 0.5)
    assert record.snapshot_hash == snapshot_hash(SNAPSHOTS[0])
    control = (await stub.GetDecision(pb.GetDecisionRequest(name="decisions/old1:c2"))).decision
    assert control.context.placement == "launch:old1 CONTROL"


async def test_the_allocation_reads_old_documents_and_old_blobs(legacy):
    async with legacy.runtime.database.sessionmaker() as session:
        parts = await partition_results(session, "old1")
    assert [n for n, _ in parts] == [1, 2]
    (_, first), (_, second) = parts
    assert first.member_ids.tolist() == ["c1", "c2"] and first.candidate_ids.tolist() == ["c1"]
    assert first.values.tolist() == [[0.25 * 80.0 - 0.5]] and first.arm_probabilities.tolist() == [0.9, 0.1]
    assert second.candidate_ids.tolist() == ["c3"] and second.values.tolist() == [[12.0]]
