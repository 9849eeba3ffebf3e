# Posture: build, test and demo targets. `make help` lists them.
GO        ?= go
BIN       := bin
PROTO_DIR := proto
PROTOS    := $(wildcard $(PROTO_DIR)/posture/v1/*.proto)
TOOLS     := $(BIN)/tools

.PHONY: help
help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc: go.mod
	@mkdir -p $(TOOLS)
	$(GO) build -o $(TOOLS)/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc

.PHONY: generate
generate: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc ## regenerate Go code from proto/
	@command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 2; }
	protoc -I $(PROTO_DIR) \
		--plugin=protoc-gen-go=$(TOOLS)/protoc-gen-go --go_out=paths=source_relative:$(PROTO_DIR) \
		--plugin=protoc-gen-go-grpc=$(TOOLS)/protoc-gen-go-grpc --go-grpc_out=paths=source_relative:$(PROTO_DIR) \
		$(PROTOS)
