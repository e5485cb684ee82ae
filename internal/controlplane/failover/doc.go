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
//  1. Hold     the read-write listener holds new connections (hook; issue 3 makes it real).
//  2. Fence    old primaries become read-only (default_transaction_read_only) and their client sessions end.
//  3. CatchUp  wait (bounded) until each geo-secondary has replayed its primary's final flushed LSN.
//     On timeout: unfence and fail with PlannedFailoverTimedOutForDatabase — nothing changed.
//  4. Demote   fast shutdown of the old primaries; their shutdown checkpoints stream to the secondaries.
//  5. Promote  the geo-secondaries leave recovery.
//  6. Record   the store swaps roles and bumps the epoch (the new primary's epoch wins from here on).
//  7. Release  the listeners route to the new primary (hook).
//  8. Rejoin   each old primary restarts as a standby of the new one (pg_rewind only if it diverged).
//
// Forced failover (allow data loss): Fence (stop the old primary if it can be reached; either way it is marked
// NeedsRejoin so nothing starts it as a primary again), Promote, Record, Release, then a best-effort Rejoin; the
// reconciler retries the rejoin until it succeeds. tryPlannedBeforeForcedFailover runs a planned failover with a
// bounded catch-up and falls back to a forced one when that is rolled back.
package failover
