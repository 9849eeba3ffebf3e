// Package fuzzseed adds seed inputs to fuzz targets and, on request, keeps
// them in the package's corpus directory. It is its own package, apart
// from testtools, so that packages whose tests need no cgo (the TPM
// simulator) stay that way.
package fuzzseed

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// WriteSeedsEnv is the environment variable that makes Add write the
// seeds it adds into the package's testdata/fuzz/<target>/ directory, when
// set to 1: `POSTURE_WRITE_FUZZ_SEEDS=1 go test -run '^Fuzz' ./pkg`.
const WriteSeedsEnv = "POSTURE_WRITE_FUZZ_SEEDS"

// Add adds one seed input to f's corpus. Seeds are made in the test
// (reports signed with a fixed key, tokens, certificates), so they are
// always there; with WriteSeedsEnv=1 they are also written where go test
// keeps a target's corpus (testdata/fuzz/<target>/), beside the inputs
// fuzzing found, so the corpus shows what the target starts from.
//
// Values may be []byte, string, bool, byte, uint32, uint64 and int64.
func Add(f *testing.F, values ...any) {
	f.Helper()
	f.Add(values...)
	if os.Getenv(WriteSeedsEnv) != "1" {
		return
	}
	data := corpusFile(f, values)
	dir := filepath.Join("testdata", "fuzz", f.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.Fatal(err)
	}
	name := fmt.Sprintf("seed-%x", sha256.Sum256(data))[:len("seed-")+16]
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
		f.Fatal(err)
	}
}

// corpusFile encodes values in the corpus file format of go test
// ("go test fuzz v1", then one Go literal per line).
func corpusFile(f *testing.F, values []any) []byte {
	f.Helper()
	var b bytes.Buffer
	b.WriteString("go test fuzz v1\n")
	for _, v := range values {
		switch v := v.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case string:
			fmt.Fprintf(&b, "string(%q)\n", v)
		case byte:
			fmt.Fprintf(&b, "byte(%q)\n", v)
		case bool, uint32, uint64, int64:
			fmt.Fprintf(&b, "%T(%v)\n", v, v)
		default:
			f.Fatalf("fuzzseed: cannot write a %T to a corpus file", v)
		}
	}
	return b.Bytes()
}
