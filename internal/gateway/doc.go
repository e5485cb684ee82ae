// Package gateway is fogo's PostgreSQL wire-protocol router. An endpoint is one TCP listener; for each client it
// reads the startup phase itself (SSLRequest and GSSENCRequest answered "N" unless TLS is configured,
// CancelRequest forwarded to the backend that issued the key), asks a Resolver which backend serves the database
// named in the startup packet, forwards the original startup packet unchanged and then relays bytes both ways.
// Authentication (SCRAM) happens end to end between the client and PostgreSQL: the gateway never sees a password.
//
// While relaying the backend's first messages it parses just the message framing, to learn the BackendKeyData
// for cancel requests; after the first ReadyForQuery it switches to plain copying. Replication is the exception
// (replication.go): a startup packet asking for physical replication is refused, and a logical replication
// session keeps being read message by message so that physical replication commands (BASE_BACKUP, a physical
// START_REPLICATION or slot) are refused too. Bad startup packets get a
// FATAL ErrorResponse (SQLSTATE 08P01) and only that connection is closed.
package gateway
