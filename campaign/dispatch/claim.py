"""Step 1 of the protocol: claim and persist, before any request is sent.

One transaction serves one or several due campaigns (`Claimer.claim_group`).
Its steps, in order, each one statement for the whole group:

1. lock the campaigns (paused, cancelled or finished ones drop out) and the
   account's and campaigns' budgets;
2. pacing and cap: a full batch's room under max_concurrent_calls and in each
   budget, else the campaign waits (pacing.py);
3. take the due contacts, resuming where the campaign's last claim stopped;
4. the contact verdict (calls.py): a destination that does not parse, a caller
   ID that cannot be used, a calling window closed now or when Aculab will
   start the call; a destination twice in the claim goes out once;
5. the do-not-call list;
6. the account budget, granted campaign after campaign in the group's order;
7. duplicates: a destination another contact of the campaign owns;
8. record the verdicts: skipped contacts marked, those outside their window
   deferred;
9. persist: each batch with its exact `rest_calls` and deterministic
   `unique_id`, its contacts `dispatching`, the calls granted against the
   budgets; then commit. From here on a crash loses nothing: the batch is
   (re-)sent by its id (send.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from campaign.aculab import encode_rest_calls
from campaign.db import queries as q
from campaign.dispatch.calls import (
    DUPLICATE_REASON,
    Prepared,
    Ready,
    Skipped,
    prepare,
    unique_id_for,
)
from campaign.dispatch.pacing import Budget, CapAsk, OpenCalls, pacing_room
from campaign.settings import Settings
from campaign.vocabulary import ACCOUNT_BUDGET, campaign_budget

log = structlog.get_logger("campaign.dispatch")


@dataclass(frozen=True)
class Wanted:
    """A campaign to claim for: up to `batches` batches, whose calls Aculab is expected
    to hold `queue_delay` seconds in its queue before starting them."""

    campaign: q.CampaignRow | q.DueCampaign
    queue_delay: float = 0.0
    batches: int = 1


@dataclass
class _Part:
    """One campaign's share of a claim transaction, as the claim works it out."""

    campaign: q.CampaignRow
    queue_delay: float
    batches: int
    size: int
    budget: Budget
    grants_window: float
    """Its grants and the account's are read over this (the longer of their windows)."""
    need: int = 0
    grant: int = 0
    limit: int = 0
    contacts: list[q.ContactRow] = field(default_factory=list)
    last: q.ClaimKey | None = None
    prepared: Prepared = field(default_factory=Prepared)
    ready: list[Ready] = field(default_factory=list)

    @property
    def key(self) -> str:
        return campaign_budget(self.campaign.id)


Claimed = tuple[list[q.BatchRow], bool]
"""What a claim got for one campaign: its batches, and whether anything changed."""


class Claimer:
    """Claims for the due campaigns the loop hands it; several daemons claim safely
    side by side (the locks serialise them, the grants pace them all)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        owner: str,
        clock: Callable[[], float],
        *,
        note_pacing: Callable[[float], None],
        read_again: Callable[[int], None],
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.owner = owner
        # Tell the loop when to look again: pacing or the cap holds claims back for
        # so long; a campaign must be read again before its next claim (it left the
        # active ones, or has no more due now: its next due time is unknown here).
        self._note_pacing = note_pacing
        self._read_again = read_again
        self._open_calls = OpenCalls(clock)
        # Campaign -> the claim-order key of the last contact claimed: the next claim
        # resumes there (q.CLAIM_CONTACTS), until the campaign is read again.
        self._after: dict[int, q.ClaimKey] = {}
        # Claim transactions begun (for tests and benchmarks: idle campaigns cost none)
        # and the campaigns they were for (one transaction can serve several).
        self.claims = 0
        self.campaign_claims = 0

    def forget(self, campaign_id: int) -> None:
        """The campaign was read again: its next claim starts from its first contact,
        so that none due behind where claims stopped waits longer than a read."""
        self._after.pop(campaign_id, None)

    async def claim_group(self, wanted: Sequence[Wanted]) -> list[Claimed]:
        """Claim for several campaigns (each once) in one transaction: for each of
        `wanted`, in its order, its batches and whether anything changed.

        Each campaign is locked, capped, paced and checked as if it were claimed
        alone, one after the other in `wanted`'s order (the fair order): the account
        budget is shared, and what one campaign takes of it the next does not get.
        Each step is one statement for the whole group, so the transaction's fixed
        cost is paid once however many campaigns it serves: what many campaigns
        with little to send each need. `queue_delay` is how long Aculab is expected
        to hold a new start in its queue: the calling window must still be open then.
        """
        account = Budget.of(
            self.settings.aculab.calls_per_second, self.settings.dispatcher.pacing_guard_seconds
        )
        self.claims += 1
        self.campaign_claims += len(wanted)
        ids = [w.campaign.id for w in wanted]
        results: dict[int, Claimed] = {i: ([], False) for i in ids}
        claimed: dict[int, list[q.BatchRow]] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            parts = await self._lock(conn, wanted, account)
            if parts:
                grants = await q.recent_grants(
                    conn,
                    [ACCOUNT_BUDGET, *(p.key for p in parts)],
                    max(p.grants_window for p in parts),
                )
                parts = await self._paced(conn, parts, account, grants)
            if parts:
                await self._take_contacts(conn, parts)
                parts = [p for p in parts if p.contacts]
            if parts:
                now = datetime.now(UTC)
                self._judge(parts, now)
                for p in parts:
                    results[p.campaign.id] = ([], True)
                await self._drop_do_not_call(conn, parts)
                self._grant_account(parts, account, grants[ACCOUNT_BUDGET])
                await self._drop_duplicates(conn, parts)
                await self._record_verdicts(conn, parts, now)
                claimed = await self._persist(conn, [p for p in parts if p.ready])
        for p in parts:
            if p.ready:
                results[p.campaign.id] = (claimed[p.campaign.id], True)
        # Committed: from here on a crash loses nothing, each batch is re-sent by id.
        for batches, _ in results.values():
            for batch in batches:
                log.debug(
                    "batch_persisted",
                    campaign_id=batch.campaign_id,
                    batch_id=batch.id,
                    unique_id=batch.unique_id,
                    calls=len(batch.contact_ids),
                )
        return [results[i] for i in ids]

    async def _lock(self, conn: q.Conn, wanted: Sequence[Wanted], account: Budget) -> list[_Part]:
        """Step 1: lock the campaigns and the budgets; the campaigns still active, as
        parts of this claim."""
        guard = self.settings.dispatcher.pacing_guard_seconds
        trial = self.settings.aculab.account_type == "trial"
        ids = [w.campaign.id for w in wanted]
        locked = await q.lock_campaigns_and_budgets(
            conn, ids, [ACCOUNT_BUDGET, *(campaign_budget(i) for i in sorted(ids))]
        )
        parts: list[_Part] = []
        for w in wanted:
            campaign = locked.get(w.campaign.id)
            if campaign is None:
                # Paused, cancelled or finished meanwhile: read again, claim nothing.
                self._read_again(w.campaign.id)
                continue
            budget = Budget.of(campaign.calls_per_second, guard)
            parts.append(
                _Part(
                    campaign,
                    w.queue_delay,
                    max(1, w.batches),
                    1 if trial else campaign.batch_size,
                    budget,
                    max(account.window, budget.window),
                )
            )
        return parts

    async def _paced(
        self,
        conn: q.Conn,
        parts: list[_Part],
        account: Budget,
        grants: dict[str, list[q.Grant]],
    ) -> list[_Part]:
        """Step 2: the parts that may claim now, each with its grant and limit: under
        its concurrency cap, and with a full batch's room in its budget and in what the
        account had before this claim (what the group's earlier campaigns take of the
        account is counted in _grant_account). The others note when to look again.
        Called under the budget locks."""
        asks = [
            CapAsk(
                p.campaign.id,
                p.campaign.max_concurrent_calls,
                p.grants_window,
                p.key,
                p.size * p.batches,
            )
            for p in parts
        ]
        open_calls = await self._open_calls.count(conn, asks, grants)
        paced = []
        for p in parts:
            budgets = {ACCOUNT_BUDGET: account, p.key: p.budget}
            # Counted under the account budget's lock, which every claim of every
            # daemon holds until it commits: two claims cannot both use the same room.
            room = p.campaign.max_concurrent_calls - open_calls[p.campaign.id]
            if room <= 0:
                # At the concurrency cap: outcomes free room (the poller wakes us).
                self._note_pacing(self.settings.dispatcher.poll_interval)
                continue
            # Wait for a full batch (at most one second's worth): fewer, fuller
            # requests, and never more than the budget in any one-second window.
            p.need = min(p.size, room, *(b.calls for b in budgets.values()))
            available, wait = pacing_room(grants, budgets, p.need)
            if available < p.need:
                self._note_pacing(wait)
                continue
            p.grant = min(p.size * p.batches, room, available)
            # Whole batches are claimed even when the grant is smaller, so that
            # contacts skipped below (invalid, duplicate...) do not leave it short.
            p.limit = p.size * math.ceil(p.grant / p.size)
            paced.append(p)
        return paced

    async def _take_contacts(self, conn: q.Conn, parts: list[_Part]) -> None:
        """Step 3: lock each part's due contacts, up to its limit, resuming where its last
        claim stopped: one statement for the group (two when some ran short)."""
        after = {p.campaign.id: self._after.get(p.campaign.id, q.FIRST_KEY) for p in parts}
        found = await q.claim_group_contacts(
            conn, [q.ContactRange(p.campaign.id, p.limit, after[p.campaign.id]) for p in parts]
        )
        for p in parts:
            p.contacts, p.last = found[p.campaign.id]
        # Before where the last claim stopped: contacts due again (a retry, a
        # release), or added with a higher priority, since.
        short = [
            p for p in parts if len(p.contacts) < p.limit and after[p.campaign.id] != q.FIRST_KEY
        ]
        if short:
            more = await q.claim_group_contacts(
                conn,
                [
                    q.ContactRange(
                        p.campaign.id,
                        p.limit - len(p.contacts),
                        q.FIRST_KEY,
                        after[p.campaign.id],
                    )
                    for p in short
                ],
            )
            for p in short:
                rows, last = more[p.campaign.id]
                p.contacts += rows
                p.last = last or p.last
        for p in parts:
            if len(p.contacts) < p.limit:
                # No more due now: the campaign is left alone until its next contact
                # is due (read again before the next claims) or a notification.
                self._read_again(p.campaign.id)

    def _judge(self, parts: list[_Part], now: datetime) -> None:
        """Step 4: each contact's verdict (calls.contact_verdict): ready, skipped
        (invalid, a duplicate within the claim) or deferred to its window, judged for
        when Aculab is expected to start the call."""
        for p in parts:
            p.prepared = prepare(
                p.contacts, p.campaign, now, now + timedelta(seconds=p.queue_delay)
            )
            p.ready = p.prepared.ready

    async def _drop_do_not_call(self, conn: q.Conn, parts: list[_Part]) -> None:
        """Step 5: the ready contacts on their campaign's do-not-call list are skipped."""
        wanted = [(p.campaign.id, r.destination.number) for p in parts for r in p.ready]
        numbers = [(cid, n) for cid, n in wanted if n]
        blocked = await q.suppressed_pairs(conn, [c for c, _ in numbers], [n for _, n in numbers])
        if not blocked:
            return
        for p in parts:
            keep = []
            for r in p.ready:
                if (p.campaign.id, r.destination.number) in blocked:
                    p.prepared.skipped.append(
                        Skipped(r.contact.id, "suppressed", "on the do-not-call list")
                    )
                else:
                    keep.append(r)
            p.ready = keep

    def _grant_account(
        self, parts: list[_Part], account: Budget, account_grants: list[q.Grant]
    ) -> None:
        """Step 6: the account budget, granted part after part in the group's order;
        contacts beyond a part's grant stay pending for its next batch."""
        granted = list(account_grants)
        for p in parts:
            if p.ready:
                # What the campaigns before this one in the group took is the
                # account's as much as what earlier claims took.
                available, wait = pacing_room(
                    {ACCOUNT_BUDGET: granted}, {ACCOUNT_BUDGET: account}, p.need
                )
                if available < p.need:
                    self._note_pacing(wait)
                    p.ready = []
                    continue  # where the next claim resumes stays as it was
                p.ready = p.ready[: min(p.grant, available)]
                granted.append(q.Grant(0.0, len(p.ready)))
            if p.last is not None:
                self._after[p.campaign.id] = p.last

    async def _drop_duplicates(self, conn: q.Conn, parts: list[_Part]) -> None:
        """Step 7: a ready contact whose destination another contact of its campaign
        owns (an earlier claim's, or one still open) is a duplicate."""
        owners = await q.own_keys(
            conn,
            [p.campaign.id for p in parts for _ in p.ready],
            [r.destination.key for p in parts for r in p.ready],
            [r.contact.id for p in parts for r in p.ready],
        )
        for p in parts:
            keep = []
            for r in p.ready:
                if r.contact.id in owners:
                    keep.append(r)
                else:
                    p.prepared.skipped.append(Skipped(r.contact.id, "duplicate", DUPLICATE_REASON))
            p.ready = keep

    async def _record_verdicts(self, conn: q.Conn, parts: list[_Part], now: datetime) -> None:
        """Step 8: mark the skipped contacts and defer those outside their window: one
        statement each for the group; one log line per contact skipped and per
        campaign deferred."""
        skipped = [s for p in parts for s in p.prepared.skipped]
        await q.set_states(
            conn,
            [s.contact_id for s in skipped],
            [s.state for s in skipped],
            [s.reason for s in skipped],
        )
        deferred = [d for p in parts for d in p.prepared.deferred]
        await q.defer(
            conn,
            [d.contact_id for d in deferred],
            [max(0.0, (d.until - now).total_seconds()) for d in deferred],
            [d.reason for d in deferred],
        )
        for p in parts:
            for s in p.prepared.skipped:
                log.info(
                    f"contact_{s.state}",
                    campaign_id=p.campaign.id,
                    contact_id=s.contact_id,
                    reason=s.reason,
                )
            if p.prepared.deferred:
                log.info(
                    "contacts_deferred",
                    campaign_id=p.campaign.id,
                    contacts=len(p.prepared.deferred),
                    earliest=min(d.until for d in p.prepared.deferred).isoformat(),
                )

    async def _persist(self, conn: q.Conn, parts: list[_Part]) -> dict[int, list[q.BatchRow]]:
        """Step 9: store each part's ready contacts as batches with their exact request and id,
        the contacts becoming dispatching, and the calls granted against the budgets:
        one round trip for the group. The batches, by campaign."""
        made = [
            (p, group)
            for p in parts
            for group in (p.ready[i : i + p.size] for i in range(0, len(p.ready), p.size))
        ]
        new = [
            q.NewBatch(
                p.campaign.id,
                p.campaign.service_name,
                unique_id_for(
                    self.settings.dispatcher.namespace,
                    p.campaign.id,
                    [(r.contact.id, r.contact.dispatch_count + 1) for r in group],
                ),
                encode_rest_calls([r.call for r in group], self.settings.aculab.account_type),
                [r.contact.id for r in group],
            )
            for p, group in made
        ]
        grants = {ACCOUNT_BUDGET: sum(len(p.ready) for p in parts)}
        grants.update((p.key, len(p.ready)) for p in parts)
        ids = (
            await q.insert_dispatching_batches(
                conn,
                batches=new,
                owner=self.owner,
                lease_seconds=self.settings.dispatcher.lease_seconds,
                grants=grants,
            )
            if new
            else []
        )
        out: dict[int, list[q.BatchRow]] = {p.campaign.id: [] for p in parts}
        for batch_id, b, (p, _) in zip(ids, new, made, strict=True):
            out[p.campaign.id].append(
                q.BatchRow(
                    id=batch_id,
                    campaign_id=p.campaign.id,
                    campaign_name=p.campaign.name,
                    service_name=p.campaign.service_name,
                    unique_id=b.unique_id,
                    rest_calls=b.rest_calls,
                    contact_ids=b.contact_ids,
                    sends=0,
                    age_seconds=0.0,
                    first_send=True,
                )
            )
        return out
