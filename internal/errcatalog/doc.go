// Package errcatalog is the ARM error catalogue as data: {code, HTTP status, message template}, copied from the
// Failover Groups REST reference (seed.go) plus the ARM platform codes the reference does not list
// (platform.go), and the one place where an error becomes an HTTP response (Write).
//
// Domain code returns *Error values made with New (the catalogue's message, `{0}` placeholders filled from the
// arguments) or Newf (the catalogue's code and status with a more specific message). Anything else that reaches
// Write is an internal error: it is answered with a generic 500 and never shown to the client, because it may
// carry internals.
package errcatalog
