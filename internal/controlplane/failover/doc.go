// Package failover moves a failover group's primary role from one server to its partner.
//
// A failover is a durable operation (package operations). When it is created, its intent is recorded as a Plan:
// which instance of each database is the old primary and which becomes the new one, and the new epoch. Steps act
// on those instance IDs, never on "whoever is primary now", so an operation resumed after a crash cannot turn
// around. Before a step acts it records its intent in the plan (Demoting, Promoting), and every step judges
// "already done?" from facts (is the instance running, is it still in recovery).
//
// Planned failover (zero data loss; it rolls back until the old primaries are demoted, then only goes forward):
//
//  1. CatchUp  with the primary still writable: CHECKPOINT it (a short shutdown checkpoint later), then wait
//     (bounded) until each geo-secondary has replayed what its primary had flushed when the wait began.
//     On timeout: fail with PlannedFailoverTimedOutForDatabase — nothing was changed.
//  2. Hold     the read-write listener holds new connections (hook) until Release, so they wait through
//     demote and promote only.
//  3. Demote   fast shutdown of the old primaries: their sessions end and their walsenders ship everything up to
//     the shutdown checkpoint. The cluster state must read "shut down" (a crashed primary has no shutdown
//     checkpoint, and "not running" proves nothing) and each secondary must have replayed that checkpoint
//     record, which proves every acknowledged commit is there. Otherwise, or on timeout: start the old
//     primaries again as primaries, fail as above.
//  4. Record   the store swaps roles and bumps the epoch, a compare-and-swap on the epoch the operation was
//     planned at (OperationInterrupted, nothing recorded, when another decision came first). From here on
//     the store names the new primaries and the old ones are fenced (NeedsRejoin), so a failure or a crash
//     can never leave two writable primaries: the operation, or the reconciler, only goes forward.
//  5. Promote  the geo-secondaries leave recovery (watched on an open session, not pg_ctl's 100 ms polling). A
//     promotion that fails ends the operation with DatabaseUnavailable; the reconciler finishes it.
//  6. Release  the listeners route to the new primary.
//  7. Rejoin   each old primary restarts as a standby of the new one (pg_rewind only if it diverged). A rejoin
//     that fails does not fail the operation: the reconciler retries it with backoff, and the group reads
//     SUSPENDED until the old primary streams again.
//
// Forced failover (allow data loss): Hold; Check that every geo-secondary can enter the primary role (a seeded
// copy, started if it does not run, answering as a standby) — one that cannot is refused with
// GeoReplicationCannotBecomePrimaryDuringUndo before anything is fenced; Fence (mark the old primary NeedsRejoin so
// nothing routes to it or starts it as a primary, then stop it: fast, immediate, then SIGKILL of the postmaster and
// its processes, each bounded; a kill or a failure to stop is an operation warning); Promote — a failure before any
// geo-secondary left recovery (judged from standby.signal once it is stopped) is undone: the old primary is
// un-fenced and started again, the roles are unchanged; Record, Release, then a best-effort Rejoin; the reconciler
// retries the rejoin until it succeeds. The fence also opens the old primary's lost-transaction report (package
// lostreport): the rejoin reads the old primary in isolation before it rewinds it, and the operation's warnings
// say what the report found. tryPlannedBeforeForcedFailover runs a planned failover with a bounded
// catch-up and falls back to a forced one when that is rolled back or refused because a primary is not running.
// Every operation first checks that the group is still at the epoch it was planned at, so a stale one acts on
// nothing.
package failover
