// Package instance manages one PostgreSQL 15 data directory: initdb, configuration, start, stop, promote, base
// backup, rewind, and the few SQL facts the control plane needs (LSNs, replication status, slots, roles).
//
// Lifecycle verbs are methods of Instance and every one is idempotent: Start on a running instance, Stop on a
// stopped one, Promote on a primary are no-ops. The role is read from facts (standby.signal on disk,
// pg_is_in_recovery()) and never remembered. Configuration that fogo owns lives in `fogo.conf` (included from
// postgresql.conf) and pg_hba.conf, and is rewritten before every start, because pg_basebackup and pg_rewind copy
// the source's configuration files. With Settings.TLS an instance serves TLS from copies of the given files in a
// tls directory beside its data directory, and Settings.AllowFrom admits networks besides loopback (over TLS only
// when TLS is set); Instance.RootCert makes fogo's connections to it verify its certificate. Passwords are passed
// to tools through PGPASSWORD or a passfile outside the data directory, never on a command line or in an error.
package instance
