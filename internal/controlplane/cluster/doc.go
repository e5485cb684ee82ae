// Package cluster acts on the PostgreSQL instances behind fogo's databases: it allocates ports, provisions a
// primary (initdb, configure, start, owner role and database), seeds a geo-secondary (physical slot, base backup,
// streaming), and restarts, stops, promotes and rejoins instances, all from the instance records in the store.
//
// Every method is idempotent and judges "already done?" from facts on disk or from PostgreSQL, so the control
// plane can call it again after a crash. Work on the instances of one failover group is serialised by Lock; the
// background reconciler only uses TryLock, so it never interferes with a running operation.
package cluster
