"""Reports end to end: a user reports messages or a person; admins list, read and resolve."""

from __future__ import annotations

import pytest

from natter.errors import InvalidArgument, NotFound, PermissionDenied
from natter.sdk import Client
from natter.v1 import admin_service_pb2 as adpb
from tests.conftest import PASSWORD, ConnFactory, UserFactory
from tests.helpers import collect


async def _admin(user: UserFactory) -> Client:
    """The first account of a fresh server is its admin."""
    admin = await user("admin")
    assert admin.is_admin
    return admin


async def test_a_reported_message_reaches_the_admins_as_it_was(
    user: UserFactory, connect: ConnFactory
) -> None:
    admin = await _admin(user)
    alice, bob = await user("alice"), await user("bob")
    cb, ca = await connect(bob), await connect(alice)
    for text in ("hello", "you are awful", "really awful"):
        await cb.send(text, recipient="alice")
    got = await collect(ca, 3)
    thread = got[0].thread_id
    report_id = await alice.report(
        reason="harassment", text="he keeps at it", thread_id=thread, seqs=[2, 3]
    )
    listed = await admin.admin("ListReports", adpb.ListReportsRequest())
    [r] = listed.reports
    assert (r.report_id, r.reporter.username, r.subject.username) == (report_id, "alice", "bob")
    assert (r.thread_id, r.text) == (thread, "he keeps at it")
    full = (await admin.admin("GetReport", adpb.GetReportRequest(report_id=report_id))).report
    assert [(m.seq, m.text) for m in full.messages] == [(2, "you are awful"), (3, "really awful")]
    # The copies outlive the account that wrote them.
    await bob.delete_account(PASSWORD)
    full = (await admin.admin("GetReport", adpb.GetReportRequest(report_id=report_id))).report
    assert [m.text for m in full.messages] == ["you are awful", "really awful"]
    await admin.admin(
        "ResolveReport", adpb.ResolveReportRequest(report_id=report_id, resolution="account gone")
    )
    assert (await admin.admin("ListReports", adpb.ListReportsRequest())).reports == []
    done = await admin.admin("ListReports", adpb.ListReportsRequest(include_resolved=True))
    assert [x.resolution for x in done.reports] == ["account gone"]
    with pytest.raises(InvalidArgument) as info:
        await admin.admin("ResolveReport", adpb.ResolveReportRequest(report_id=report_id))
    assert info.value.reason == "ALREADY_RESOLVED"


async def test_reporting_a_person_copies_their_latest_messages_and_can_block(
    user: UserFactory, connect: ConnFactory
) -> None:
    admin = await _admin(user)
    alice, bob = await user("alice"), await user("bob")
    ca, cb = await connect(alice), await connect(bob)
    await ca.send("hi bob", recipient="bob")
    for i in range(3):
        await cb.send(f"spam {i}", recipient="alice")
    got = await collect(ca, 3)
    report_id = await alice.report("bob", "spam", thread_id=got[0].thread_id, block=True)
    full = (await admin.admin("GetReport", adpb.GetReportRequest(report_id=report_id))).report
    assert [m.text for m in full.messages] == ["spam 0", "spam 1", "spam 2"]  # not alice's
    assert [u.username for u in await alice.blocked()] == ["bob"]
    # A report about a person, with no thread, copies nothing.
    other = await alice.report("bob", "scam", text="asked for money")
    bare = (await admin.admin("GetReport", adpb.GetReportRequest(report_id=other))).report
    assert (bare.messages, bare.text, bare.thread_id) == ([], "asked for money", 0)


async def test_report_rules_and_only_admins_read_reports(
    user: UserFactory, connect: ConnFactory
) -> None:
    await _admin(user)
    alice, bob, carol = await user("alice"), await user("bob"), await user("carol")
    ca, cb = await connect(alice), await connect(bob)
    sent = await cb.send("hi", recipient="alice")
    await collect(ca, 1)
    cases = [
        (dict(username="alice"), InvalidArgument, "SELF_REPORT"),
        (dict(username="bob", reason="nonsense"), InvalidArgument, "BAD_REASON"),
        (dict(username=""), InvalidArgument, "NOTHING_REPORTED"),
        (dict(thread_id=sent.thread_id, seqs=[7]), NotFound, "NO_SUCH_MESSAGE"),
        (dict(username="bob", text="x" * 1001), InvalidArgument, "TOO_LONG"),
    ]
    for kwargs, error, reason in cases:
        with pytest.raises(error) as info:
            await alice.report(**kwargs)  # type: ignore[arg-type]
        assert info.value.reason == reason, kwargs
    # Someone else's thread cannot be reported from.
    with pytest.raises(PermissionDenied):
        await carol.report("bob", thread_id=sent.thread_id)
    for who in (alice, bob):
        with pytest.raises(PermissionDenied) as denied:
            await who.admin("ListReports", adpb.ListReportsRequest())
        assert denied.value.reason == "NOT_AN_ADMIN"
