# pgtrail: `make demo` runs it end to end on a throwaway PostgreSQL,
# `make test` runs the whole test suite. Both install what is missing.
GO      ?= go
BIN     := bin/pgtrail
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: all build demo test vet deps proto clean

all: build

# deps installs the PostgreSQL server binaries when the machine lacks them.
deps: deps-sinks deps-ui deps-monitoring
	@command -v $(GO) >/dev/null || { echo "Go is required: https://go.dev/dl/"; exit 1; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing the PostgreSQL server (Debian package postgresql)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null; }
	@$(GO) mod download

# deps-monitoring installs Debian's prometheus package: promtool checks and
# unit-tests configs/monitoring, and prometheus scrapes pgtrail in
# test/e2e/monitoring_test.go.
.PHONY: deps-monitoring
deps-monitoring:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
		echo "installing Prometheus and promtool (Debian package prometheus)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# deps-ui installs Debian's chromium, the headless browser the web UI's
# tests drive (test/e2e/ui_test.go, with chromedp).
.PHONY: deps-ui
deps-ui:
	@command -v chromium >/dev/null || { \
		echo "installing Chromium for the UI tests (Debian package chromium)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# deps-sinks installs the servers the S3 and ClickHouse sinks are tested
# against: Debian's clickhouse-server, and versitygw, built into the cache
# dir where test/s3test looks for it.
.PHONY: deps-sinks
deps-sinks:
	@test -x /usr/bin/clickhouse-server -o -x /usr/sbin/clickhouse-server || { \
		echo "installing ClickHouse (Debian packages clickhouse-server, clickhouse-client)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null; }
	@dir="$${XDG_CACHE_HOME:-$$HOME/.cache}/pgtrail/versitygw-v1.8.0"; test -x "$$dir/versitygw" || { \
		echo "building versitygw v1.8.0 into $$dir"; \
		GOBIN="$$dir" GOFLAGS=-mod=mod $(GO) install github.com/versity/versitygw/cmd/versitygw@v1.8.0; }

build: deps
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/pgtrail

demo: build
	$(GO) run ./test/demo $(BIN)

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

test: deps vet
	$(GO) test -count=1 -timeout 15m ./...

# interop runs the interop bed (test/interop, build tag interop): real Apache
# Kafka (KRaft), Kafka Connect and the Debezium PostgreSQL connector, resolved
# from Maven Central into ~/.cache/pgtrail-interop by test/interop/pom.xml.
.PHONY: interop deps-interop
deps-interop: deps
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
		echo "installing a JDK 17 and Maven (Debian packages openjdk-17-jdk-headless, maven)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null; }

interop: deps-interop
	$(GO) test -tags interop ./test/interop -v -count=1 -timeout 40m

# proto regenerates plugins/proto from sink.proto with pinned tool versions
# (buf compiles without protoc), installed into .cache/bin.
BUF_VERSION            := v1.75.0
PROTOC_GEN_GO_VERSION  := v1.36.12
PROTOC_GEN_GRPC_VERSION := v1.5.1
proto:
	GOBIN=$(CURDIR)/.cache/bin $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	GOBIN=$(CURDIR)/.cache/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/.cache/bin $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GRPC_VERSION)
	cd plugins/proto && PATH=$(CURDIR)/.cache/bin:$$PATH buf generate

clean:
	rm -rf bin

# bench measures pgtrail against pg_recvlogical (the machine's limit) and
# against trigger-based auditing, on private PostgreSQL servers it starts: a
# short run (under 5 minutes), or the full one with FULL=1. It prints a table
# and writes one JSON line per scenario to bench-results.jsonl.
.PHONY: bench
bench: build
	$(GO) run ./test/bench -bin $(BIN) $(if $(FULL),-full)

# fuzz runs every fuzz target (func Fuzz* in a _test.go file) for FUZZTIME
# each; `make test` runs their seeds only. Findings are written under the
# package's testdata/fuzz, where `go test` then runs them as seeds.
FUZZTIME ?= 30s
.PHONY: fuzz
fuzz:
	@for pkg in $$($(GO) list -f '{{if .TestGoFiles}}{{.ImportPath}}{{end}}' ./...); do \
		for name in $$(cat $$($(GO) list -f '{{range .TestGoFiles}}{{$$.Dir}}/{{.}} {{end}}' $$pkg) | grep -o '^func Fuzz[A-Za-z0-9_]*' | cut -d' ' -f2); do \
			echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
			$(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -timeout 30m || exit 1; \
		done; \
	done
