"""The approval request model: who may vote, quorum of distinct people, one deny, expiry and withdrawal."""

from __future__ import annotations

import re
from dataclasses import replace
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgproxy.approvals.model import (
    ApprovalRequest,
    RequestContext,
    RequestState,
    Vote,
    VoteRefused,
    new_request_id,
    same_person,
)
from pgproxy.auth.identity import Identity
from pgproxy.policy.engine import ApprovalRequirement
from pgproxy.policy.matching import identity_matches
from pgproxy.policy.model import Approvers

IDP = "https://idp.example.com/"
OTHER_IDP = "https://other-idp.example.com/"
NOW = 1_700_000_000.0
TIMEOUT = 600


def person(subject: str, email: str | None = None, *groups: str, issuer: str = IDP) -> Identity:
    return Identity(subject=subject, issuer=issuer, email=email, name=None, groups=groups, expires_at=None)


ADA = person("u-ada", "ada@example.com", "dev")
DBA1 = person("u-dba1", "dba1@example.com", "dba")
DBA2 = person("u-dba2", "dba2@example.com", "dba")
DBA3 = person("u-dba3", None, "dba")
OUTSIDER = person("u-eve", "eve@example.com", "dev")

CONTEXT = RequestContext(
    client_address="10.0.0.7",
    application_name="migrate",
    database="orders",
    upstream_role="app",
    sql="ALTER TABLE orders ADD COLUMN note text",
    category="ddl",
    command="ALTER TABLE",
    relations=("public.orders",),
    rule_id="ddl-needs-dba",
)


Matcher = dict[str, list[str]]


def requirement(quorum: int = 1, approvers: Matcher | None = None) -> ApprovalRequirement:
    return ApprovalRequirement(Approvers.model_validate(approvers or {"groups": ["dba"]}), quorum, TIMEOUT)


def opened(requester: Identity = ADA, quorum: int = 1, approvers: Matcher | None = None) -> ApprovalRequest:
    return ApprovalRequest.open(requester, requirement(quorum, approvers), CONTEXT, now=NOW)


def cast(voter: Identity, approve: bool = True, at: float = NOW + 10, reason: str | None = None) -> Vote:
    return Vote(voter, approve, at, reason=reason)


def refused(request: ApprovalRequest, vote: Vote, reason: str) -> None:
    """``vote`` is refused with a reason (for the voter) matching ``reason``."""
    with pytest.raises(VoteRefused, match=reason) as info:
        request.vote(vote)
    assert info.value.reason == str(info.value)


# -- opening -------------------------------------------------------------------------------------------------


def test_a_new_request_is_pending_until_its_timeout() -> None:
    request = opened()
    assert re.fullmatch(r"apr-[0-9a-f]{16}", request.id)
    assert (request.state, request.votes, request.decided_at) == (RequestState.PENDING, (), None)
    assert not request.decided
    assert (request.created_at, request.expires_at) == (NOW, NOW + TIMEOUT)
    assert (request.statement_digest, request.session_id, request.extra) == (None, None, {})

    bound = ApprovalRequest.open(
        ADA, requirement(), CONTEXT, now=NOW, request_id="apr-given", statement_digest="d1", session_id="s1"
    )
    assert (bound.id, bound.statement_digest, bound.session_id) == ("apr-given", "d1", "s1")


def test_request_ids_are_not_repeated() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000


# -- nobody approves their own request ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "voter",
    [
        pytest.param(replace(ADA, groups=("dba",)), id="requester-in-approver-group"),
        pytest.param(replace(ADA, groups=("dba", "admin")), id="admin-in-approver-group"),
        pytest.param(person("u-ada-2", "ada@example.com", "dba"), id="same-email-other-subject"),
        pytest.param(person("u-ada-3", "ADA@Example.com", "dba", issuer=OTHER_IDP), id="same-email-other-case-idp"),
        pytest.param(person("u-ada", None, "dba"), id="same-subject-no-email"),
    ],
)
def test_the_requester_never_votes_on_their_own_request(voter: Identity) -> None:
    request = opened(ADA)
    assert request.may_vote(voter) == "nobody approves their own request"
    refused(request, cast(voter), "own request")
    refused(request, cast(voter, approve=False, reason="changed my mind"), "own request")


def test_an_admin_requester_is_refused_even_when_named_as_an_approver() -> None:
    admin = person("u-root", "root@example.com", "dba", "admin")
    request = opened(admin, approvers={"emails": ["root@example.com", "dba1@example.com"]})
    refused(request, cast(admin), "own request")
    assert request.vote(cast(DBA1)).state is RequestState.APPROVED


def test_the_same_subject_at_another_issuer_is_another_person() -> None:
    namesake = person("u-ada", None, "dba", issuer=OTHER_IDP)
    assert not same_person(namesake, replace(ADA, email=None))
    assert opened(replace(ADA, email=None)).vote(cast(namesake)).state is RequestState.APPROVED


# -- only approvers vote ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("approvers", "voter", "allowed"),
    [
        ({"groups": ["dba"]}, DBA1, True),
        ({"groups": ["dba"]}, OUTSIDER, False),
        ({"emails": ["dba1@example.com"]}, person("u-x", "DBA1@EXAMPLE.COM"), True),  # emails ignore case
        ({"emails": ["dba1@example.com"]}, DBA2, False),
        ({"email_domains": ["example.com"]}, DBA3, False),  # no email: no match
        ({"subjects": ["u-dba3"]}, DBA3, True),
        ({"groups": ["dba"], "issuers": [OTHER_IDP]}, DBA1, False),  # every given field must match
        ({"groups": ["dba"], "issuers": [OTHER_IDP]}, replace(DBA1, issuer=OTHER_IDP), True),
    ],
)
def test_only_identities_matching_the_approvers_vote(approvers: Matcher, voter: Identity, allowed: bool) -> None:
    request = opened(ADA, approvers=approvers)
    if allowed:
        assert request.may_vote(voter) is None
        assert request.vote(cast(voter)).state is RequestState.APPROVED
    else:
        assert "is not an approver" in (request.may_vote(voter) or "")
        refused(request, cast(voter), f"{re.escape(voter.display)} is not an approver of request {request.id}")
        refused(request, cast(voter, approve=False), "not an approver")  # nor deny


# -- quorum counts distinct people -----------------------------------------------------------------------------


def test_quorum_counts_distinct_people() -> None:
    request = opened(quorum=2)
    first = request.vote(cast(DBA1, at=NOW + 1))
    assert (first.state, len(first.approvals), first.decided_at) == (RequestState.PENDING, 1, None)

    refused(first, cast(DBA1, at=NOW + 2), "already voted")
    refused(first, cast(person("u-dba1-alt", "Dba1@Example.com", "dba"), at=NOW + 2), "already voted")
    refused(first, cast(replace(DBA1, email="another@example.com"), at=NOW + 2), "already voted")
    refused(first, cast(DBA1, approve=False, at=NOW + 2), "already voted")  # no change of mind

    second = first.vote(cast(DBA2, at=NOW + 3))
    assert (second.state, second.decided_at) == (RequestState.APPROVED, NOW + 3)
    assert [vote.voter for vote in second.approvals] == [DBA1, DBA2]
    assert second.denial is None


def test_identities_without_email_are_told_apart_by_subject() -> None:
    no_email = person("u-dba4", None, "dba")
    request = opened(quorum=2).vote(cast(DBA3)).vote(cast(no_email, at=NOW + 11))
    assert request.state is RequestState.APPROVED


# -- one deny denies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("approvals_first", [0, 1, 2])
def test_one_deny_denies(approvals_first: int) -> None:
    request = opened(quorum=3)
    for index, voter in enumerate((DBA1, DBA2)[:approvals_first]):
        request = request.vote(cast(voter, at=NOW + index))
    denial = cast(DBA3, approve=False, at=NOW + 50, reason="not during business hours")
    denied = request.vote(denial)
    assert (denied.state, denied.decided_at, denied.denial) == (RequestState.DENIED, NOW + 50, denial)
    assert len(denied.votes) == approvals_first + 1
    assert denied.approvers == tuple(f"dba{i}@example.com" for i in range(1, approvals_first + 1))


# -- decided requests take no votes ---------------------------------------------------------------------------


def decided_requests() -> dict[str, ApprovalRequest]:
    request = opened()
    return {
        "approved": request.vote(cast(DBA1)),
        "denied": request.vote(cast(DBA1, approve=False)),
        "expired": request.expire(NOW + TIMEOUT),
        "withdrawn": request.withdraw(NOW + 5),
    }


@pytest.mark.parametrize("state", ["approved", "denied", "expired", "withdrawn"])
def test_votes_after_the_decision_are_refused(state: str) -> None:
    request = decided_requests()[state]
    assert request.decided and request.state.value == state
    assert request.may_vote(DBA2) == f"request {request.id} is already {state}"
    refused(request, cast(DBA2), f"already {state}")
    refused(request, cast(DBA2, at=NOW + TIMEOUT + 100), f"already {state}")  # not "expired" for a decided one
    assert request.expire(NOW + 10 * TIMEOUT) is request
    assert request.withdraw(NOW + 20) is request


# -- expiry ---------------------------------------------------------------------------------------------------


def test_a_vote_at_or_after_the_deadline_is_refused() -> None:
    request = opened()
    deadline = request.expires_at
    refused(request, cast(DBA1, at=deadline), "expired before the vote")
    refused(request, cast(DBA1, at=deadline + 1), "expired before the vote")
    refused(request, cast(ADA, at=deadline), "expired")  # expiry is checked first
    assert request.vote(cast(DBA1, at=deadline - 0.001)).state is RequestState.APPROVED


def test_expire_turns_a_pending_request_expired_from_its_deadline_on() -> None:
    request = opened(quorum=2).vote(cast(DBA1))
    assert request.expire(request.expires_at - 0.001) is request
    expired = request.expire(request.expires_at)
    assert (expired.state, expired.decided_at) == (RequestState.EXPIRED, request.expires_at)
    assert expired.votes == request.votes
    late = request.expire(request.expires_at + 3600)
    assert (late.state, late.decided_at) == (RequestState.EXPIRED, request.expires_at + 3600)
    assert request.state is RequestState.PENDING  # values never change in place


def test_withdraw_ends_a_pending_request_whenever_the_client_leaves() -> None:
    request = opened(quorum=2).vote(cast(DBA1))
    withdrawn = request.withdraw(NOW + 30)
    assert (withdrawn.state, withdrawn.decided_at, withdrawn.votes) == (RequestState.WITHDRAWN, NOW + 30, request.votes)
    assert opened().withdraw(NOW + TIMEOUT + 1).state is RequestState.WITHDRAWN  # even past the deadline


# -- who approved ---------------------------------------------------------------------------------------------


def test_approvers_are_named_in_voting_order_email_else_issuer_and_subject() -> None:
    request = opened(quorum=3)
    for index, voter in enumerate((DBA2, DBA3, DBA1)):
        request = request.vote(cast(voter, at=NOW + index))
    assert request.approvers == ("dba2@example.com", f"{IDP}#u-dba3", "dba1@example.com")
    assert [vote.at for vote in request.votes] == [NOW, NOW + 1, NOW + 2]


def test_same_person_is_symmetric_and_ignores_email_case() -> None:
    pairs = [
        (ADA, replace(ADA, groups=("dba",), name="Ada"), True),
        (ADA, person("x", "ADA@EXAMPLE.COM", issuer=OTHER_IDP), True),
        (ADA, person("u-ada", None, issuer=OTHER_IDP), False),
        (person("a"), person("b"), False),
        (person("a"), person("a"), True),
    ]
    for a, b, expected in pairs:
        assert same_person(a, b) is expected
        assert same_person(b, a) is expected


# -- whatever the votes, the rules hold -----------------------------------------------------------------------

SUBJECTS = ("s1", "s2", "s3", "s4")
EMAILS = (None, "p@x.com", "P@X.com", "q@x.com", "r@y.org")
GROUPS = ("dba", "admin", "dev")
identities = st.builds(
    Identity,
    subject=st.sampled_from(SUBJECTS),
    issuer=st.sampled_from((IDP, OTHER_IDP)),
    email=st.sampled_from(EMAILS),
    name=st.none(),
    groups=st.lists(st.sampled_from(GROUPS), unique=True).map(tuple),
    expires_at=st.none(),
)
approver_sets = st.sampled_from(
    [
        {"groups": ["dba"]},
        {"groups": ["dba", "admin"]},
        {"email_domains": ["x.com"]},
        {"groups": ["dba"], "issuers": [IDP]},
        {"emails": ["p@x.com", "q@x.com", "r@y.org"]},
        {"subjects": ["s1", "s2", "s3"]},
    ]
)
votes = st.lists(
    st.tuples(identities, st.sampled_from((True, True, True, False)), st.floats(0, 1.2)),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(requester=identities, approvers=approver_sets, quorum=st.integers(1, 3), attempts=votes)
def test_whatever_the_votes_every_counted_vote_follows_the_rules(
    requester: Identity,
    approvers: Matcher,
    quorum: int,
    attempts: list[tuple[Identity, bool, float]],
) -> None:
    request = opened(requester, quorum, approvers)
    matcher = request.requirement.approvers
    for voter, approve, fraction in attempts:
        vote = Vote(voter, approve, NOW + fraction * TIMEOUT)
        # What the rules say, written independently of the model.
        allowed = (
            not request.decided
            and vote.at < request.expires_at
            and not same_person(voter, requester)
            and identity_matches(matcher, voter)
            and not any(same_person(voter, earlier.voter) for earlier in request.votes)
        )
        try:
            after = request.vote(vote)
        except VoteRefused:
            assert not allowed
            continue
        assert allowed
        assert after.votes == (*request.votes, vote)
        request = after

        counted = request.votes
        assert all(identity_matches(matcher, one.voter) for one in counted)
        assert not any(same_person(one.voter, requester) for one in counted)
        assert not any(same_person(a.voter, b.voter) for a, b in combinations(counted, 2))
        if request.state is RequestState.APPROVED:
            assert len(request.approvals) == quorum and request.denial is None
            assert request.decided_at == counted[-1].at
        elif request.state is RequestState.DENIED:
            assert request.denial is counted[-1] and len(request.approvals) == len(counted) - 1
        else:
            assert request.state is RequestState.PENDING and len(request.approvals) < quorum
            assert request.denial is None and request.decided_at is None
