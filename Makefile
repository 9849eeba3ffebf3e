# Posture: `make help` lists the targets.
GO        ?= go
BIN       := bin
TOOLS     := $(BIN)/tools
PROTO_DIR := proto
PROTOS    := $(wildcard $(PROTO_DIR)/posture/v1/*.proto)
PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64
# The agent is built without gRPC's request tracing (golang.org/x/net/trace,
# and html/template with it), which it never serves: a binary 4 MB smaller
# and about 2.5 MiB less resident (scripts/agent-footprint.sh).
AGENT_TAGS := grpcnotrace

# The version from git describe (v1.2.3, or 1.2.3-4-gabc1234 four commits
# after it) and the commit, stamped into both binaries.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null | sed 's/^v//')
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X github.com/posture-project/posture/internal/version.version=$(VERSION) \
           -X github.com/posture-project/posture/internal/version.commit=$(COMMIT)
# Package versions: scripts/pkg-version.sh.
PKG_VERSION ?= $(shell scripts/pkg-version.sh '$(VERSION)')
DIST      := dist
DISTBUILD := $(DIST)/build
# The collector needs cgo (SQLite): arm64 is built with Debian's cross compiler.
CC_arm64  ?= aarch64-linux-gnu-gcc

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: build
build: ## build posture-collector and posture-agent into bin/
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./collector/cmd/posture-collector
	$(GO) build -tags $(AGENT_TAGS) -ldflags "$(LDFLAGS)" -o $(BIN)/ ./agent/cmd/posture-agent

.PHONY: package
package: ## dist/: .deb and .rpm of agent and collector (amd64, arm64), agent .tar.gz (macOS) and .zip (Windows), SHA256SUMS
	@command -v $(CC_arm64) >/dev/null || { echo "$(CC_arm64) not found: apt-get install gcc-aarch64-linux-gnu (the collector's arm64 build needs cgo)" >&2; exit 2; }
	rm -rf $(DIST)
	@set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; out=$(DISTBUILD)/$$os-$$arch; \
		echo "build agent $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -tags $(AGENT_TAGS) -ldflags "-s -w $(LDFLAGS)" -o $$out/ ./agent/cmd/posture-agent; \
	done
	@set -e; for arch in amd64 arm64; do \
		cc=gcc; [ $$arch = amd64 ] || cc=$(CC_arm64); \
		echo "build collector linux/$$arch (CC=$$cc)"; \
		CGO_ENABLED=1 CC=$$cc GOOS=linux GOARCH=$$arch $(GO) build -ldflags "-s -w $(LDFLAGS)" -o $(DISTBUILD)/linux-$$arch/ ./collector/cmd/posture-collector; \
	done
	@set -e; host=$(DISTBUILD)/linux-$$($(GO) env GOHOSTARCH); share=$(DISTBUILD)/share; \
	mkdir -p $$share/completions $$share/man/agent $$share/man/collector; \
	for b in agent collector; do \
		for sh in bash zsh fish; do $$host/posture-$$b completion $$sh >$$share/completions/posture-$$b.$$sh; done; \
		$$host/posture-$$b man $$share/man/$$b; \
	done; \
	$$host/posture-agent completion powershell >$$share/completions/posture-agent.ps1; \
	gzip -9n $$share/man/*/*.1
	$(GO) -C tools/package build -o $(abspath $(TOOLS))/posture-package .
	$(TOOLS)/posture-package --version '$(PKG_VERSION)' --build $(DISTBUILD) --out $(DIST)

# grpcurl, an independent gRPC client the tests drive, from the module proxy.
GRPCURL_VERSION := v1.9.4
$(TOOLS)/grpcurl:
	@mkdir -p $(TOOLS)
	GOBIN=$(abspath $(TOOLS)) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

.PHONY: test
test: $(TOOLS)/grpcurl ## run every test (real gRPC, TLS, SQLite; swtpm, tpm2-tools and nginx when installed)
	PATH="$(abspath $(TOOLS)):$$PATH" $(GO) test -race -count=1 ./...

# Every fuzz target (func FuzzXxx in a _test.go file) runs for FUZZTIME, one
# after the other, as `go test -run '^$$' -fuzz '^FuzzXxx$$' -fuzztime
# FUZZTIME ./pkg` would run it: each package's instrumented test binary is
# built once (go test -c -fuzz) and run for each of its targets in the
# package's directory, where failing inputs land in testdata/fuzz, with the
# corpus go test keeps in GOCACHE; linking the binary for every target
# would take longer than a short run fuzzes. -fuzzminimizetime bounds how
# long each new input is shrunk, which for kilobyte inputs (event logs,
# certificates) would otherwise take most of a short run.
#
# Go 1.26's fuzzer may end a run with a bare "context deadline exceeded"
# when FUZZTIME runs out while a worker is busy (golang/go#75804, fixed in
# Go 1.27): that is reported and passed over. Anything else that fails, or
# an input written to testdata/fuzz, fails the target.
FUZZTIME ?= 2m
FUZZMINIMIZETIME ?= 5s
FUZZBIN := $(BIN)/fuzz

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each (default 2m), one after another
	@set -e; mkdir -p $(FUZZBIN); cache=$$($(GO) env GOCACHE)/fuzz; log=$$(mktemp); trap 'rm -f $$log' EXIT; \
	for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
		pkg=$$($(GO) list $$dir); bin=$(abspath $(FUZZBIN))/$$(echo $$pkg | tr / _).test; \
		$(GO) test -c -fuzz . -o $$bin $$dir; \
		for target in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$dir/*_test.go | sort); do \
			echo "--- fuzz $$pkg $$target for $(FUZZTIME)"; \
			status=0; (cd $$dir && $$bin -test.run '^$$' -test.fuzz "^$$target$$" -test.fuzztime $(FUZZTIME) \
				-test.fuzzminimizetime $(FUZZMINIMIZETIME) -test.fuzzcachedir $$cache/$$pkg) >$$log 2>&1 || status=$$?; \
			cat $$log; \
			if [ $$status -ne 0 ]; then \
				if grep -qx '    context deadline exceeded' $$log && ! grep -q 'Failing input written\|seed corpus\|panic:\|_test\.go:[0-9]' $$log; then \
					echo "--- fuzz $$target: the fuzzer's deadline race at the end of FUZZTIME (golang/go#75804); no input failed"; \
				else \
					exit 1; \
				fi; \
			fi; \
		done; \
	done

.PHONY: bench
bench: ## run the benchmarks; each reports its ratio to a baseline measured in the same run
	$(GO) test -run '^$$' -bench . -benchtime 2s ./...

.PHONY: demo
demo: build ## start a collector, enroll this machine's agent, show the fleet and a decision
	./scripts/demo.sh

$(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc: go.mod
	@mkdir -p $(TOOLS)
	$(GO) build -o $(TOOLS)/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc

# What the command lines generate: the flag reference in
# docs/configuration.md, the configuration files the packages install and
# the agent's service definitions, each written by the test that holds it.
GENERATED_FROM_FLAGS := docs/configuration.md packaging/config packaging/systemd/posture-agent.service packaging/launchd

.PHONY: generate
generate: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc ## regenerate Go code from proto/, and the docs and files generated from the flags
	@command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 2; }
	protoc -I $(PROTO_DIR) \
		--plugin=protoc-gen-go=$(TOOLS)/protoc-gen-go --go_out=paths=source_relative:$(PROTO_DIR) \
		--plugin=protoc-gen-go-grpc=$(TOOLS)/protoc-gen-go-grpc --go-grpc_out=paths=source_relative:$(PROTO_DIR) \
		$(PROTOS)
	$(GO) test -count=1 -run '^(TestConfigurationDoc|TestConfigExample|TestServiceDefinitionsGolden)$$' ./collector/cmd/posture-collector ./agent/cmd/posture-agent -update

.PHONY: generate-check
generate-check: generate ## fail when the committed generated code or docs are stale
	@git diff --exit-code -- $(PROTO_DIR) $(GENERATED_FROM_FLAGS) || { echo "generated code or docs are stale: run make generate and commit" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- $(PROTO_DIR) $(GENERATED_FROM_FLAGS))" || { git status --porcelain -- $(PROTO_DIR) $(GENERATED_FROM_FLAGS); echo "untracked generated files: run make generate and commit" >&2; exit 1; }

.PHONY: cross
cross: ## build and vet the agent for every shipped GOOS/GOARCH with CGO_ENABLED=0
	@set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; \
		echo "agent $$os/$$arch"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -tags $(AGENT_TAGS) -o /dev/null ./agent/cmd/posture-agent; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) vet ./agent/...; \
	done

.PHONY: lint
lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); test -z "$$out" || { echo "gofmt would change: $$out" >&2; exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN) $(DIST)
