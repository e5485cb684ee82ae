// Package failover moves a failover group's primary role from one server to its partner.
//
// A failover is a durable operation (package operations). When it is created, its intent is recorded as a Plan:
// which instance of each database is the old primary and which becomes the new one, and the new epoch. Steps act
// on those instance IDs, never on "whoever is primary now", so an operation resumed after a crash cannot turn
// around. Before a step acts it records its intent in the plan (Demoting, Promoting), and every step judges
// "already done?" from facts (is the instance running, is it still in recovery).
//
// Planned failover (zero data loss; it completes or it rolls back):
//
//  1. CatchUp  with the primary still writable: CHECKPOINT it (a short shutdown checkpoint later), then wait
//     (bounded) until each geo-secondary has replayed what its primary had flushed when the wait began.
//     On timeout: fail with PlannedFailoverTimedOutForDatabase — nothing was changed.
//  2. Hold     the read-write listener holds new connections (hook) until Release, so they wait through
//     demote and promote only.
//  3. Demote   fast shutdown of the old primaries: their sessions end and their walsenders ship everything up to
//     the shutdown checkpoint; wait (bounded) until each secondary has flushed past it, which proves every
//     acknowledged commit is there. On timeout: start the old primaries again, fail as above.
//  4. Promote  the geo-secondaries leave recovery (watched on an open session, not pg_ctl's 100 ms polling).
//  5. Record   the store swaps roles and bumps the epoch (the new primary's epoch wins from here on).
//  6. Release  the listeners route to the new primary (hook).
//  7. Rejoin   each old primary restarts as a standby of the new one (pg_rewind only if it diverged).
//
// Forced failover (allow data loss): Fence (stop the old primary if it can be reached; either way it is marked
// NeedsRejoin so nothing starts it as a primary again), Promote, Record, Release, then a best-effort Rejoin; the
// reconciler retries the rejoin until it succeeds. tryPlannedBeforeForcedFailover runs a planned failover with a
// bounded catch-up and falls back to a forced one when that is rolled back.
package failover
