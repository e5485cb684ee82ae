// Package app assembles a running fogo from its parts: the state store, the PostgreSQL instance manager, the
// gateway endpoints, the operations runner, the failover orchestrator, the observer/reconciler and the REST API.
//
// Start brings them up in order (state first, then endpoints of existing servers, then interrupted operations,
// then the API) and Close takes them down in reverse. `fogo serve` and the end-to-end tests both use it.
package app
