package signals

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
)

// cmpAutoUpdate compares autoUpdate values, whose fields are unexported.
var cmpAutoUpdate = []cmp.Option{cmp.AllowUnexported(autoUpdate{}), protocmp.Transform()}

// recorded is one recorded run of a command. stdout and stderr name files
// in testdata/updates, or, when they contain a slash, in testdata.
type recorded struct {
	stdout, stderr string
	exitCode       int
	err            error
}

// fakeRunner replays recorded outputs and counts the calls; a command it
// has no recording for is "not found", as on a real system.
type fakeRunner struct {
	t          *testing.T
	recordings map[string]recorded // by command line

	mu    sync.Mutex
	calls map[string]int
}

func newFakeRunner(t *testing.T, recordings map[string]recorded) *fakeRunner {
	return &fakeRunner{t: t, recordings: recordings, calls: make(map[string]int)}
}

func (f *fakeRunner) Run(_ context.Context, name string, args ...string) ([]byte, []byte, int, error) {
	line := commandLine(name, args)
	f.mu.Lock()
	f.calls[line]++
	f.mu.Unlock()
	r, ok := f.recordings[line]
	if !ok {
		return nil, nil, -1, fmt.Errorf("exec: %q: %w", name, exec.ErrNotFound)
	}
	if r.err != nil {
		return nil, nil, -1, r.err
	}
	return f.read(r.stdout), f.read(r.stderr), r.exitCode, nil
}

func (f *fakeRunner) read(name string) []byte {
	if name == "" {
		return nil
	}
	p := filepath.Join("testdata", "updates", name)
	if strings.Contains(name, "/") {
		p = filepath.Join("testdata", filepath.FromSlash(name))
	}
	b, err := os.ReadFile(p)
	if err != nil {
		f.t.Error(err)
	}
	return b
}

func (f *fakeRunner) count(line string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[line]
}

// fakeRegistry serves a registry snapshot from testdata/windows/*.json:
// {"HKLM\\…\\Key": {"Name": "text" or number}}. A key may be marked
// "denied": true to fail with errAccessDenied.
type fakeRegistry struct {
	keys  map[string]map[string]any // by lower-case path: the registry ignores case
	names []string                  // the paths as written
}

func loadRegistry(t *testing.T, files ...string) *fakeRegistry {
	t.Helper()
	r := &fakeRegistry{keys: map[string]map[string]any{}}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("testdata", "windows", f))
		if err != nil {
			t.Fatal(err)
		}
		var keys map[string]map[string]any
		if err := json.Unmarshal(b, &keys); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for k, vals := range keys {
			r.keys[strings.ToLower(k)] = vals
			r.names = append(r.names, k)
		}
	}
	return r
}

func (r *fakeRegistry) Values(key string, names ...string) (map[string]any, error) {
	vals, ok := r.keys[strings.ToLower(key)]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", key, fs.ErrNotExist)
	}
	if vals["denied"] == true {
		return nil, fmt.Errorf("open %s: Access is denied.: %w", key, errAccessDenied)
	}
	out := map[string]any{}
	for _, n := range names {
		switch v := vals[n].(type) {
		case string:
			out[n] = v
		case float64:
			out[n] = uint64(v)
		}
	}
	return out, nil
}

func (r *fakeRegistry) SubKeys(key string) ([]string, error) {
	prefix := strings.ToLower(key) + `\`
	seen := map[string]bool{}
	var out []string
	for _, k := range r.names {
		if len(k) > len(prefix) && strings.ToLower(k[:len(prefix)]) == prefix {
			sub, _, _ := strings.Cut(k[len(prefix):], `\`)
			if !seen[sub] {
				seen[sub] = true
				out = append(out, sub)
			}
		}
	}
	return out, nil
}

// fakeWMI serves WMI rows from testdata/windows/*.wmi.json: {"Class":
// [rows]} or {"Class": {"error": "denied" | "missing"}}.
type fakeWMI struct {
	classes map[string]json.RawMessage
	queries []string
}

func loadWMI(t *testing.T, file string) *fakeWMI {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "windows", file))
	if err != nil {
		t.Fatal(err)
	}
	w := &fakeWMI{}
	if err := json.Unmarshal(b, &w.classes); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return w
}

var wqlFrom = regexp.MustCompile(`(?i)\bFROM\s+(\w+)`)

func (w *fakeWMI) rows(class string, dst any) error {
	raw, ok := w.classes[class]
	if !ok {
		return fmt.Errorf("Invalid class %s (0x80041010): %w", class, fs.ErrNotExist)
	}
	var e struct{ Error string }
	if json.Unmarshal(raw, &e) == nil {
		switch e.Error {
		case "denied":
			return fmt.Errorf("Access denied (0x80041003): %w", errAccessDenied)
		case "missing":
			return fmt.Errorf("Invalid namespace (0x8004100e): %w", fs.ErrNotExist)
		}
	}
	return json.Unmarshal(raw, dst)
}

func (w *fakeWMI) Query(namespace, query string, dst any) error {
	w.queries = append(w.queries, namespace+" "+query)
	m := wqlFrom.FindStringSubmatch(query)
	if m == nil {
		return fmt.Errorf("no FROM in %q", query)
	}
	return w.rows(m[1], dst)
}

func (w *fakeWMI) EncryptableVolumes() ([]encryptableVolume, error) {
	var vols []encryptableVolume
	err := w.rows("Win32_EncryptableVolume", &vols)
	return vols, err
}
