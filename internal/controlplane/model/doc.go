// Package model holds the records fogo keeps in its store: logical servers, databases, the PostgreSQL instances
// behind them, failover groups and long-running operations.
//
// Records describe intent and the last recorded outcome; live facts (is an instance running, is a standby
// streaming) are observed from PostgreSQL, never trusted from a remembered flag. Keys are lower-cased so lookups
// are case-insensitive, as ARM is, while the user's casing is kept for display.
package model
