// Package e2e drives a real fogo (in-process, or as a child process for crash tests) through its REST API
// against real PostgreSQL 15 instances: servers, databases, failover groups, planned and forced failovers,
// the error catalogue and the official Azure SDK for Go.
package e2e
