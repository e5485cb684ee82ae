// Package logrepl is a small client for PostgreSQL's logical replication protocol and a decoder for the
// pgoutput plugin's messages (protocol version 1), written on pgx/v5's pgconn and pgproto3 (jackc/pglogrepl is not
// available here).
//
// A Conn is a replication connection (`replication=database`). It runs the replication commands
// (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT … LOGICAL pgoutput, DROP_REPLICATION_SLOT) and streams a slot with
// START_REPLICATION: Stream delivers XLogData payloads and primary keepalives, and SendStandbyStatus reports how far
// the consumer has durably applied, which lets the server advance the slot's confirmed_flush_lsn.
//
// Decode turns one XLogData payload into a typed pgoutput message (Begin, Commit, Relation, Type, Insert, Update,
// Delete, Truncate, Origin, LogicalMessage). Column values stay in PostgreSQL's text format; an unchanged TOASTed
// value is marked Unchanged, never confused with NULL.
package logrepl
