// Package bench measures fogo against the raw PostgreSQL limit, in one run on one machine, so the two numbers
// share the machine's noise. Failover measures a planned failover through fogo (total duration and the longest
// gap a continuously committing client sees) next to a raw `pg_ctl stop -m fast` + `pg_ctl promote` of a plain
// primary/standby pair configured the same way.
package bench
