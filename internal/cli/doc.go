// Package cli implements the fogo client commands (server, db, failover-group) in the spirit of
// `az sql server|db|failover-group`. They talk to a running `fogo serve` over its ARM API only: a command sends
// one request, follows a long-running operation through its Azure-AsyncOperation URL while printing progress to
// stderr, and prints the resulting resource as a table or as JSON on stdout. An ARM error becomes the command's
// error (non-zero exit) with its code and message.
package cli
