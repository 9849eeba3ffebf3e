package docscheck

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/posture-project/posture/internal/testtools"
)

// TestGoGatewaySnippet compiles the Go gateway guide's example against
// the module's gatewayclient, inside a handler that gives it what it
// names (a context, the gateway's TLS configuration, the request and its
// writer): an API change that breaks the guide fails here. The program
// exists only in the go command's overlay, never in the tree.
func TestGoGatewaySnippet(t *testing.T) {
	blocks := testtools.CodeBlocks(t, filepath.Join(repoRoot, "docs", "gateways", "go.md"), "# Go", "go")
	if len(blocks) != 1 {
		t.Fatalf("docs/gateways/go.md has %d go blocks, want 1", len(blocks))
	}
	src := `package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/posture-project/posture/gatewayclient"
)

func handle(ctx context.Context, gatewayTLS *tls.Config, w http.ResponseWriter, r *http.Request) {
` + blocks[0] + `}

func main() { _ = handle }
`
	dir := t.TempDir()
	file := filepath.Join(dir, "main.go")
	if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	pkg := filepath.Join(root, "internal", "docscheck", "gosnippet")
	overlay, err := json.Marshal(map[string]map[string]string{"Replace": {filepath.Join(pkg, "main.go"): file}})
	if err != nil {
		t.Fatal(err)
	}
	overlayFile := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayFile, overlay, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-overlay", overlayFile, "-o", os.DevNull, "./internal/docscheck/gosnippet")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the Go guide's example does not compile against this module: %v\n%s\nthe program:\n%s", err, out, numbered(src))
	}
}

// numbered is src with line numbers, as compiler errors count them.
func numbered(src string) string {
	var b strings.Builder
	for i, line := range strings.Split(src, "\n") {
		fmt.Fprintf(&b, "%3d  %s\n", i+1, line)
	}
	return b.String()
}
