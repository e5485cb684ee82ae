// Package agent is fogo's side on each database host in cluster mode. The agent runs beside the PostgreSQL
// instances placed on its host and serves the host's part of their lifecycle (instance.Host: running initdb,
// pg_ctl, pg_basebackup, pg_rewind and pg_controldata, reading and writing files in the instances' directories,
// identifying and signalling their postmasters) to the elected controller over HTTPS, authenticated with a token
// the fogo processes share through the sealed state. The controller keeps deciding; the agent acts on its host
// and on nothing else: every path must lie inside its instances directory, only the PostgreSQL programs fogo uses
// may run, and their options are checked.
//
// The agent also keeps its host registered in etcd: a durable record (name, region, addresses, directories,
// port range) that placement reads, and a liveness key under a lease that disappears when the agent stops
// renewing it.
package agent
