# The README's two commands: `make run` (build, then serve on the embedded default) and `make test`.
GO ?= go
DATA_DIR ?= ./fogo-data

.PHONY: run build test vet bench-failover

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

# FOGO_REQUIRE_NETNS=1 turns "network namespaces not available" (not root, no ip) from a skip into a failure.
test: export FOGO_REQUIRE_NETNS := 1

bench-failover: build
	./bin/fogo bench failover
