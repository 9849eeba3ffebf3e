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
	"strconv"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/testing/protocmp"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// ignoreOtherVolumes leaves a disk section's other volumes out of a
// comparison, for tests that check them on their own.
var ignoreOtherVolumes = protocmp.IgnoreFields(&posturev1.DiskEncryption{}, "other_volumes")

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
	// volumes, when set, are the encryptable volumes, for tests that build
	// them from captured manage-bde output.
	volumes []encryptableVolume
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
	if w.volumes != nil {
		return w.volumes, nil
	}
	var vols []encryptableVolume
	err := w.rows("Win32_EncryptableVolume", &vols)
	return vols, err
}

// loadRegQuery serves the keys printed by captured "reg query" outputs in
// testdata/windows: a line naming the key (HKEY_LOCAL_MACHINE\…), then
// "    Name    REG_TYPE    Data" lines. REG_SZ and REG_EXPAND_SZ data are
// strings, REG_DWORD and REG_QWORD ("0x…") numbers, as the registry
// reader returns them.
func loadRegQuery(t *testing.T, files ...string) *fakeRegistry {
	t.Helper()
	hives := strings.NewReplacer("HKEY_LOCAL_MACHINE", "HKLM", "HKEY_USERS", "HKU")
	r := &fakeRegistry{keys: map[string]map[string]any{}}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("testdata", "windows", f))
		if err != nil {
			t.Fatal(err)
		}
		var key string
		for line := range strings.Lines(string(b)) {
			line = strings.TrimRight(line, "\r\n")
			if strings.HasPrefix(line, "HKEY_") {
				key = hives.Replace(line)
				if _, ok := r.keys[strings.ToLower(key)]; !ok {
					r.keys[strings.ToLower(key)] = map[string]any{}
					r.names = append(r.names, key)
				}
				continue
			}
			fields := strings.Split(strings.TrimSpace(line), "    ")
			if key == "" || len(fields) < 2 || !strings.HasPrefix(fields[1], "REG_") {
				continue
			}
			name, typ, data := fields[0], fields[1], strings.Join(fields[2:], "    ")
			switch typ {
			case "REG_DWORD", "REG_QWORD":
				n, err := strconv.ParseUint(strings.TrimPrefix(data, "0x"), 16, 64)
				if err != nil {
					t.Fatalf("%s: %s %s: %v", f, name, data, err)
				}
				r.keys[strings.ToLower(key)][name] = float64(n)
			case "REG_SZ", "REG_EXPAND_SZ":
				r.keys[strings.ToLower(key)][name] = data
			}
		}
	}
	return r
}

// readPSList reads a captured PowerShell Format-List output ("Name : Value"
// lines) from testdata/windows into a map. Values stay text.
func readPSList(t *testing.T, file string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "windows", file))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, " : ")
		if !ok {
			// An empty value leaves "Name :" without the trailing space.
			k, v, ok = strings.Cut(strings.TrimRight(line, "\r\n"), " :")
			if !ok || strings.TrimSpace(v) != "" {
				continue
			}
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out
}

// wmiFromPSList builds the fake WMI's rows of class from a captured
// Format-List output of the same class: PowerShell prints True/False for
// booleans and digits for numbers, which become JSON booleans and numbers.
func wmiFromPSList(t *testing.T, class, file string) *fakeWMI {
	t.Helper()
	row := map[string]any{}
	for k, v := range readPSList(t, file) {
		switch {
		case v == "True", v == "False":
			row[k] = v == "True"
		default:
			if n, err := strconv.ParseUint(v, 10, 64); err == nil {
				row[k] = n
			} else {
				row[k] = v
			}
		}
	}
	raw, err := json.Marshal([]any{row})
	if err != nil {
		t.Fatal(err)
	}
	return &fakeWMI{classes: map[string]json.RawMessage{class: raw}}
}

// manageBDELabels maps manage-bde -status labels, in the languages of the
// captures, to the Win32_EncryptableVolume method output each line shows.
var manageBDELabels = map[string]string{
	"Conversion Status": "conversion", "Konvertierungsstatus": "conversion",
	"Percentage Encrypted": "percent", "Verschlüsselt (Prozent)": "percent",
	"Encryption Method": "method", "Verschlüsselungsmethode": "method",
	"Protection Status": "protection", "Schutzstatus": "protection",
	"Key Protectors": "protectors", "Schlüsselschutzvorrichtungen": "protectors",
}

// manageBDEValues maps the values manage-bde prints to the method outputs
// (GetConversionStatus, GetProtectionStatus, GetEncryptionMethod).
var manageBDEValues = map[string]func(*encryptableVolume){
	"Fully Decrypted":             func(v *encryptableVolume) { v.ConversionStatus = 0 },
	"Vollständig entschlüsselt":   func(v *encryptableVolume) { v.ConversionStatus = 0 },
	"Fully Encrypted":             func(v *encryptableVolume) { v.ConversionStatus = 1 },
	"Used Space Only Encrypted":   func(v *encryptableVolume) { v.ConversionStatus, v.EncryptionFlags = 1, 1 },
	"Encryption in Progress":      func(v *encryptableVolume) { v.ConversionStatus = 2 },
	"Protection On":               func(v *encryptableVolume) { v.ProtectionStatus = 1 },
	"Protection Off":              func(v *encryptableVolume) { v.ProtectionStatus = 0 },
	"Der Schutz ist deaktiviert.": func(v *encryptableVolume) { v.ProtectionStatus = 0 },
	"XTS-AES 128":                 func(v *encryptableVolume) { v.EncryptionMethod = 6 },
	"XTS-AES 256":                 func(v *encryptableVolume) { v.EncryptionMethod = 7 },
	"None":                        func(v *encryptableVolume) { v.EncryptionMethod = 0 },
	"Kein":                        func(v *encryptableVolume) { v.EncryptionMethod = 0 },
	"None Found":                  func(v *encryptableVolume) { v.KeyProtectorIDs = []string{} },
	"Keine gefunden":              func(v *encryptableVolume) { v.KeyProtectorIDs = []string{} },
}

// volumeFromManageBDE reads a captured manage-bde -status block into the
// method outputs of the volume it describes. manage-bde is the console
// front end of Win32_EncryptableVolume: each line prints one output of the
// methods the agent calls, in the user's language. The agent never parses
// this text; the tests translate it to hold the agent's decisions against
// the machine states real users captured. Labels or values the tables
// above do not know fail the test.
func volumeFromManageBDE(t *testing.T, file, drive string, volumeType uint32) encryptableVolume {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "windows", file))
	if err != nil {
		t.Fatal(err)
	}
	v := encryptableVolume{DeviceID: `\\?\Volume{` + drive + `}\`, DriveLetter: drive, VolumeType: volumeType}
	inProtectors := false
	for line := range strings.Lines(string(b)) {
		label, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if inProtectors && strings.TrimSpace(line) != "" && !ok {
			v.KeyProtectorIDs = append(v.KeyProtectorIDs, strings.TrimSpace(line))
			continue
		}
		what := manageBDELabels[strings.TrimSpace(label)]
		if !ok || what == "" {
			continue
		}
		value = strings.TrimSpace(value)
		inProtectors = what == "protectors" && value == ""
		switch {
		case inProtectors:
			v.KeyProtectorIDs = []string{}
		case what == "percent":
			p := strings.TrimSpace(strings.TrimSuffix(value, "%"))
			f, err := strconv.ParseFloat(strings.Replace(p, ",", ".", 1), 64)
			if err != nil {
				t.Fatalf("%s: percentage %q: %v", file, value, err)
			}
			v.EncryptionPercentage = uint32(f)
		default:
			set, known := manageBDEValues[value]
			if !known {
				t.Fatalf("%s: %s value %q is not in manageBDEValues", file, label, value)
			}
			set(&v)
		}
	}
	return v
}

// requireTool finds a tool, skipping the test without it, or failing when
// POSTURE_REQUIRE_TOOLS=1.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s is not installed, so this check cannot compare the agent with it: %v", name, err)
	if os.Getenv("POSTURE_REQUIRE_TOOLS") == "1" {
		t.Fatal(msg + " (POSTURE_REQUIRE_TOOLS=1)")
	}
	t.Skip("SKIPPED CHECK: " + msg)
	return ""
}
