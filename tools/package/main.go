// Command package builds Posture's release files from binaries that make
// package has built: .deb and .rpm packages of the agent and the collector
// (nfpm, configured by packaging/nfpm/*.yaml), the agent for macOS as
// .tar.gz and for Windows as .zip, and SHA256SUMS over them all.
//
// It lives in a module of its own so that nfpm and its dependencies stay
// out of the project's go.mod.
package main

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb"
	_ "github.com/goreleaser/nfpm/v2/rpm"
)

func main() {
	top := flag.String("top", ".", "the repository's top directory")
	build := flag.String("build", "dist/build", "where make package put the binaries: OS-ARCH/ directories and share/")
	out := flag.String("out", "dist", "where to write the packages")
	version := flag.String("version", "", "package version, such as 1.2.3 (required)")
	linuxArchs := flag.String("linux", "amd64,arm64", "architectures of the Linux packages")
	only := flag.String("only", "", "build only these kinds, comma-separated: deb, rpm, darwin, windows (default all)")
	products := flag.String("products", "agent,collector", "Linux packages to build")
	flag.Parse()
	if *version == "" {
		log.Fatal("--version is required")
	}
	log.SetFlags(0)
	p := packager{top: abs(*top), build: abs(*build), out: abs(*out), version: *version, mtime: sourceDate()}
	want := func(kind string) bool { return *only == "" || strings.Contains(","+*only+",", ","+kind+",") }
	for _, arch := range strings.Split(*linuxArchs, ",") {
		for _, product := range strings.Split(*products, ",") {
			for _, format := range []string{"deb", "rpm"} {
				if want(format) {
					p.must(p.linux(product, arch, format))
				}
			}
		}
	}
	for _, arch := range []string{"amd64", "arm64"} {
		if want("darwin") {
			p.must(p.darwin(arch))
		}
		if want("windows") {
			p.must(p.windows(arch))
		}
	}
	p.must(p.sums())
}

type packager struct {
	top, build, out, version string
	mtime                    time.Time
}

func (p *packager) must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		log.Fatal(err)
	}
	return a
}

// sourceDate is the time stamped on every file: SOURCE_DATE_EPOCH when
// set, so that two builds of one commit are the same bytes.
func sourceDate() time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var sec int64
		if _, err := fmt.Sscan(s, &sec); err == nil {
			return time.Unix(sec, 0).UTC()
		}
	}
	return time.Now().UTC().Truncate(time.Second)
}

// linux builds the deb or rpm package of product for arch.
func (p *packager) linux(product, arch, format string) error {
	env := map[string]string{
		"ARCH":      arch,
		"VERSION":   p.version,
		"BUILD":     filepath.Join(p.build, "linux-"+arch),
		"SHARE":     filepath.Join(p.build, "share"),
		"PACKAGING": filepath.Join(p.top, "packaging"),
		"TOP":       p.top,
	}
	cfgPath := filepath.Join(p.top, "packaging", "nfpm", product+".yaml")
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	// ${NAME} everywhere in the file, scripts and contents included, and
	// nothing from this process's environment.
	text := os.Expand(string(raw), func(k string) string {
		v, ok := env[k]
		if !ok {
			err = fmt.Errorf("%s: ${%s} is not set by the packaging program", cfgPath, k)
		}
		return v
	})
	if err != nil {
		return err
	}
	cfg, err := nfpm.ParseWithEnvMapping(strings.NewReader(text), func(string) string { return "" })
	if err != nil {
		return fmt.Errorf("%s: %w", cfgPath, err)
	}
	info, err := cfg.Get(format)
	if err != nil {
		return err
	}
	info = nfpm.WithDefaults(info)
	info.MTime = p.mtime
	if err := nfpm.Validate(info); err != nil {
		return fmt.Errorf("%s for %s: %w", cfgPath, format, err)
	}
	pkgr, err := nfpm.Get(format)
	if err != nil {
		return err
	}
	target := filepath.Join(p.out, pkgr.ConventionalFileName(info))
	f, err := os.Create(target)
	if err != nil {
		return err
	}
	if err := pkgr.Package(info, f); err != nil {
		f.Close()
		os.Remove(target)
		return fmt.Errorf("%s %s %s: %w", product, format, arch, err)
	}
	return p.done(f, target)
}

func (p *packager) done(f *os.File, target string) error {
	if err := f.Close(); err != nil {
		return err
	}
	fi, err := os.Stat(target)
	if err != nil {
		return err
	}
	log.Printf("%-52s %6.1f MB", filepath.Base(target), float64(fi.Size())/1e6)
	return nil
}

// archiveFile is one file of an archive.
type archiveFile struct {
	src, name string
	mode      int64
}

// agentFiles are what the macOS and Windows archives hold besides the
// binary.
func (p *packager) agentFiles(exe string) []archiveFile {
	return []archiveFile{
		{exe, filepath.Base(exe), 0o755},
		{filepath.Join(p.top, "LICENSE"), "LICENSE", 0o644},
		{filepath.Join(p.top, "packaging", "config", "agent.yaml"), "agent.yaml", 0o644},
	}
}

// darwin builds posture-agent_VERSION_darwin_ARCH.tar.gz.
func (p *packager) darwin(arch string) error {
	dir := fmt.Sprintf("posture-agent_%s_darwin_%s", p.version, arch)
	target := filepath.Join(p.out, dir+".tar.gz")
	files := append(p.agentFiles(filepath.Join(p.build, "darwin-"+arch, "posture-agent")),
		archiveFile{filepath.Join(p.top, "packaging", "launchd", "posture-agent.plist"), "posture-agent.plist", 0o644},
		archiveFile{filepath.Join(p.build, "share", "completions", "posture-agent.zsh"), "completions/_posture-agent", 0o644},
		archiveFile{filepath.Join(p.build, "share", "completions", "posture-agent.bash"), "completions/posture-agent.bash", 0o644})
	mans, _ := filepath.Glob(filepath.Join(p.build, "share", "man", "agent", "*.1.gz"))
	for _, m := range mans {
		files = append(files, archiveFile{m, "man/man1/" + filepath.Base(m), 0o644})
	}
	f, err := os.Create(target)
	if err != nil {
		return err
	}
	gz, _ := gzip.NewWriterLevel(f, gzip.BestCompression)
	gz.ModTime = p.mtime
	tw := tar.NewWriter(gz)
	for _, af := range files {
		if err := addTar(tw, dir+"/"+af.name, af, p.mtime); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := gz.Close(); err != nil {
		return err
	}
	return p.done(f, target)
}

func addTar(tw *tar.Writer, name string, af archiveFile, mtime time.Time) error {
	data, err := os.ReadFile(af.src)
	if err != nil {
		return err
	}
	hdr := &tar.Header{Name: name, Mode: af.mode, Size: int64(len(data)), ModTime: mtime, Typeflag: tar.TypeReg, Uname: "root", Gname: "wheel"}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = tw.Write(data)
	return err
}

// windows builds posture-agent_VERSION_windows_ARCH.zip.
func (p *packager) windows(arch string) error {
	dir := fmt.Sprintf("posture-agent_%s_windows_%s", p.version, arch)
	target := filepath.Join(p.out, dir+".zip")
	files := p.agentFiles(filepath.Join(p.build, "windows-"+arch, "posture-agent.exe"))
	files = append(files, archiveFile{filepath.Join(p.build, "share", "completions", "posture-agent.ps1"), "completions/posture-agent.ps1", 0o644})
	f, err := os.Create(target)
	if err != nil {
		return err
	}
	zw := zip.NewWriter(f)
	for _, af := range files {
		data, err := os.ReadFile(af.src)
		if err != nil {
			return err
		}
		h := &zip.FileHeader{Name: dir + "/" + af.name, Method: zip.Deflate, Modified: p.mtime}
		h.SetMode(os.FileMode(af.mode))
		w, err := zw.CreateHeader(h)
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return p.done(f, target)
}

// sums writes SHA256SUMS over every file in the output directory, in the
// format sha256sum -c reads.
func (p *packager) sums() error {
	entries, err := os.ReadDir(p.out)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() && e.Name() != "SHA256SUMS" {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		f, err := os.Open(filepath.Join(p.out, n))
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), n)
	}
	log.Printf("SHA256SUMS: %d files", len(names))
	return os.WriteFile(filepath.Join(p.out, "SHA256SUMS"), []byte(b.String()), 0o644)
}
