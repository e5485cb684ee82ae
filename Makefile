# The README's two commands: `make run` (build, then serve on the embedded default) and `make test`.
GO ?= go
DATA_DIR ?= ./fogo-data

.PHONY: run build test vet bench-failover fuzz fuzz-corpus chaos

build:
	$(GO) build -o bin/fogo ./cmd/fogo

run: build
	./bin/fogo serve --data-dir $(DATA_DIR)

# FOGO_REQUIRE_PG=1 turns "PostgreSQL 15 not installed" from a skip into a failure, FOGO_REQUIRE_ETCD=1 the same
# for etcd (the store's etcd backend is tested against a real etcd server).
test:
	gofmt -l . | (! grep .) || (echo "gofmt needed"; exit 1)
	$(GO) vet ./...
	FOGO_REQUIRE_PG=1 FOGO_REQUIRE_ETCD=1 $(GO) test -p 2 -timeout 25m ./...
	$(MAKE) fuzz FUZZTIME=5s

# The fuzz targets (package:target): what clients and callers send before fogo trusts them (the gateway's startup
# phase and replication commands, the ARM and Synapse request bodies) and what a source server streams (pgoutput)
# or an old primary's slot gives (test_decoding's lines, for the lost-transaction report).
# `go test` runs each one's seeds and committed corpus (testdata/fuzz) as a test; `make fuzz` also fuzzes each for
# FUZZTIME (the test command: 5s each; a longer run: make fuzz FUZZTIME=5m). A failure writes the input that
# caused it to the package's testdata/fuzz/<target>/, which then fails `go test` until fixed.
FUZZTIME ?= 1m
FUZZ_TARGETS = \
	./internal/gateway:FuzzStartupPhase ./internal/gateway:FuzzReplicationCommand \
	./internal/postgres/logrepl:FuzzDecode ./internal/postgres/lostxact:FuzzParseLine \
	./internal/controlplane/validate:FuzzServerPut ./internal/controlplane/validate:FuzzDatabasePut \
	./internal/controlplane/validate:FuzzFailoverGroupPut \
	./internal/api/synapse:FuzzRequestBodies

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# fuzz-corpus copies (up to 40 per target) the inputs the fuzzer found interesting, from Go's cache, into each
# package's testdata/fuzz: run it after a long `make fuzz`, then commit them.
fuzz-corpus:
	@cache=$$($(GO) env GOCACHE)/fuzz/github.com/fogo-db/fogo; \
	for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; src=$$cache/$${pkg#./}/$$name; dst=$$pkg/testdata/fuzz/$$name; \
		[ -d $$src ] || continue; mkdir -p $$dst; \
		ls $$src | head -40 | while read f; do cp $$src/$$f $$dst/; done; \
		echo "$$dst: $$(ls $$dst | wc -l) inputs"; \
	done

# FOGO_REQUIRE_NETNS=1 turns "network namespaces not available" (not root, no ip) from a skip into a failure.
test: export FOGO_REQUIRE_NETNS := 1

bench-failover: build
	./bin/fogo bench failover

# The full fault campaign (docs/chaos.md): FAULTS faults, SEED to repeat a sequence (default: from the clock).
FAULTS ?= 50
chaos: build
	./bin/fogo chaos --faults $(FAULTS) $(if $(SEED),--seed $(SEED))
