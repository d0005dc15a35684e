# tokencache — `make help` lists the targets.
GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
BIN         := bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
LDFLAGS     := -s -w -X github.com/tokencache/tokencache/internal/cli.stamped=$(VERSION)
export CGO_ENABLED ?= 0

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build the three binaries into bin/
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

.PHONY: run
run: ## start the service in demo mode: embedded Redis and Polyv simulator; API key local-dev-key unless TOKENCACHE_API_KEYS or TOKENCACHE_API_KEYS_FILE is set
	if [ -z "$${TOKENCACHE_API_KEYS_FILE:-}" ]; then export TOKENCACHE_API_KEYS=$${TOKENCACHE_API_KEYS:-local-dev-key}; fi; $(GO) run ./cmd/tokencache -demo

# The two longest packages go first, so that they run side by side.
.PHONY: test
test: ## run every test with the race detector (needs redis-server on PATH)
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 20m ./drills ./cache ./...

.PHONY: lint
lint: ## gofmt check, go mod tidy check, go vet and staticcheck
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd bench/peer && $(GO) mod tidy -diff && $(GO) vet ./...

.PHONY: fuzz
fuzz: ## run each fuzz test for 20s
	$(GO) test ./polyv -run '^$$' -fuzz FuzzDecodeReply -fuzztime 20s
	$(GO) test ./cache -run '^$$' -fuzz FuzzKeyInjective -fuzztime 20s
	$(GO) test ./httpapi -run '^$$' -fuzz FuzzChatTokenRequest -fuzztime 20s

.PHONY: bench
bench: ## run the Go benchmarks
	$(GO) test -run '^$$' -bench . -benchmem ./...

.PHONY: bench-http
bench-http: ## side-by-side HTTP benchmark: echo ceiling, hit (local), hit (Redis), miss; writes docs/benchmarks.md
	bash scripts/bench-http.sh

.PHONY: drills
drills: ## fault drills, long form, against real processes (writes docs/drills.md); the randomized fault test, 40 checks
	DRILLS_LONG=1 DRILLS_REPORT=$(CURDIR)/docs/drills.md $(GO) test -count=1 -timeout 30m -v ./drills
	DRILLS_LONG=1 $(GO) test -count=1 -timeout 30m -run TestRandomFaults -v ./cache

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN)
