package siem_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/agent"
	"github.com/posture-project/posture/collector"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/siem"
	"github.com/posture-project/posture/internal/testtools"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// schema is testdata/ocsf-1.3.0.json: the parts of OCSF 1.3.0 the lines
// claim.
type schema struct {
	Version   string `json:"version"`
	BaseEvent struct {
		Required   []string                     `json:"required"`
		Attributes []string                     `json:"attributes"`
		Enums      map[string]map[string]string `json:"enums"`
	} `json:"base_event"`
	Profiles map[string][]string `json:"profiles"`
	Classes  map[string]struct {
		Name         string                       `json:"name"`
		CategoryUID  int                          `json:"category_uid"`
		CategoryName string                       `json:"category_name"`
		Required     []string                     `json:"required"`
		JustOne      []string                     `json:"just_one"`
		Attributes   []string                     `json:"attributes"`
		Enums        map[string]map[string]string `json:"enums"`
	} `json:"classes"`
	Objects map[string]struct {
		Required   []string                     `json:"required"`
		Attributes []string                     `json:"attributes"`
		Enums      map[string]map[string]string `json:"enums"`
	} `json:"objects"`
}

func loadSchema(t *testing.T) *schema {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "ocsf-1.3.0.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s schema
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// validate holds one line to the schema: every attribute the class has,
// every required one present, every enumerated value one of the
// enumeration's with its caption where the line names it, type_uid and
// the category agreeing with the class. It returns the problems found.
func (s *schema) validate(line []byte) []string {
	var problems []string
	bad := func(f string, args ...any) { problems = append(problems, fmt.Sprintf(f, args...)) }
	var ev map[string]any
	if err := json.Unmarshal(line, &ev); err != nil {
		return []string{"not JSON: " + err.Error()}
	}
	num := func(m map[string]any, k string) (int, bool) {
		f, ok := m[k].(float64)
		return int(f), ok && f == float64(int(f))
	}
	classUID, _ := num(ev, "class_uid")
	class, ok := s.Classes[strconv.Itoa(classUID)]
	if !ok {
		return []string{fmt.Sprintf("class_uid %v is not a class the lines claim", ev["class_uid"])}
	}
	allowed := slices.Concat(s.BaseEvent.Attributes, class.Attributes)
	for k := range ev {
		if !slices.Contains(allowed, k) {
			bad("%s has no attribute %q", class.Name, k)
		}
	}
	for _, k := range slices.Concat(s.BaseEvent.Required, class.Required) {
		if _, ok := ev[k]; !ok {
			bad("required %s missing", k)
		}
	}
	if len(class.JustOne) > 0 {
		n := 0
		for _, k := range class.JustOne {
			if _, ok := ev[k]; ok {
				n++
			}
		}
		if n != 1 {
			bad("just one of %v wanted, %d present", class.JustOne, n)
		}
	}
	for _, k := range []string{"activity_id", "category_uid", "class_uid", "severity_id", "time", "type_uid"} {
		if _, ok := num(ev, k); !ok {
			bad("%s is not an integer: %v", k, ev[k])
		}
	}
	if cat, _ := num(ev, "category_uid"); cat != class.CategoryUID || ev["category_name"] != class.CategoryName || ev["class_name"] != class.Name {
		bad("category %v %v / class name %v, want %d %s / %s", ev["category_uid"], ev["category_name"], ev["class_name"], class.CategoryUID, class.CategoryName, class.Name)
	}
	act, _ := num(ev, "activity_id")
	if tu, _ := num(ev, "type_uid"); tu != classUID*100+act {
		bad("type_uid %d, want %d", tu, classUID*100+act)
	}
	if tn := fmt.Sprint(ev["type_name"]); tn != class.Name+": "+fmt.Sprint(ev["activity_name"]) {
		bad("type_name %q", tn)
	}
	enum := func(where string, m map[string]any, enums map[string]map[string]string, captions map[string]string) {
		for k, values := range enums {
			v, present := m[k]
			if !present {
				continue
			}
			n, ok := num(m, k)
			caption, known := values[strconv.Itoa(n)]
			if !ok || !known {
				bad("%s%s %v is not in its enumeration", where, k, v)
				continue
			}
			if name, ok := captions[k]; ok {
				if got, has := m[name]; has && got != caption && n != 99 {
					bad("%s%s is %v, the caption of %d is %q", where, name, got, n, caption)
				}
			}
		}
	}
	captions := map[string]string{"activity_id": "activity_name", "severity_id": "severity", "status_id": "status", "state_id": "state",
		"security_level_id": "security_level", "prev_security_level_id": "prev_security_level", "type_id": "type"}
	enum("", ev, s.BaseEvent.Enums, captions)
	enum("", ev, class.Enums, captions)
	if t, _ := num(ev, "time"); t < 1_600_000_000_000 {
		bad("time %d is not in milliseconds", t)
	}
	object := func(name string, v any) {
		o, ok := v.(map[string]any)
		if !ok {
			bad("%s is not an object", name)
			return
		}
		def := s.Objects[name]
		for k := range o {
			if !slices.Contains(def.Attributes, k) {
				bad("%s has no attribute %q", name, k)
			}
		}
		for _, k := range def.Required {
			if _, ok := o[k]; !ok {
				bad("%s.%s required and missing", name, k)
			}
		}
		enum(name+".", o, def.Enums, captions)
	}
	md, _ := ev["metadata"].(map[string]any)
	object("metadata", ev["metadata"])
	object("product", md["product"])
	if md["version"] != s.Version {
		bad("metadata.version %v, want %s", md["version"], s.Version)
	}
	if u, _ := md["uid"].(string); len(u) != 36 {
		bad("metadata.uid %v is not the message's ID", md["uid"])
	}
	if d, ok := ev["device"]; ok {
		object("device", d)
		if os, ok := d.(map[string]any)["os"]; ok {
			object("os", os)
		}
	}
	if u, ok := ev["user"]; ok {
		object("user", u)
	}
	if states, ok := ev["security_states"].([]any); ok {
		for _, st := range states {
			object("security_state", st)
		}
	}
	return problems
}

const testPolicy = `
freshness: {stale_after: 1h, expire_after: 2h}
checks:
  - {name: disk_encryption, weight: 50, grace: 72h}
  - {name: firewall, weight: 50}
levels:
  - {name: basic, min_score: 50}
  - {name: corp, min_score: 100}
`

// firewallOff reports a machine whose firewall is off.
type firewallOff struct{}

func (firewallOff) Collect(context.Context) *posturev1.PostureReport {
	meta := &posturev1.SignalMeta{Status: posturev1.Status_STATUS_OK, ObservedAt: timestamppb.Now()}
	return &posturev1.PostureReport{
		Os:       &posturev1.OSInfo{Meta: meta, Platform: "linux", Name: "debian", Version: "12"},
		Disk:     &posturev1.DiskEncryption{Meta: meta, SystemEncrypted: true},
		Firewall: &posturev1.Firewall{Meta: meta, Detail: "nftables has no rules"},
	}
}

// syslogServer is a TLS syslog server that reads RFC 5425 frames.
type syslogServer struct {
	mu     sync.Mutex
	frames []string
}

func (s *syslogServer) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				n, err := r.ReadString(' ')
				if err != nil {
					return
				}
				size, err := strconv.Atoi(strings.TrimSpace(n))
				if err != nil {
					return
				}
				msg := make([]byte, size)
				if _, err := io.ReadFull(r, msg); err != nil {
					return
				}
				s.mu.Lock()
				s.frames = append(s.frames, string(msg))
				s.mu.Unlock()
			}
		}()
	}
}

// tlsListener listens on loopback with a certificate made for the test;
// caFile is its certificate, which verifies it.
func tlsListener(t *testing.T) (l net.Listener, caFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "syslog"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "syslog-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err = tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, caFile
}

// TestLines runs a collector exporting to a rotated file and to a TLS
// syslog server, makes device changes and decisions, and holds every line
// to the OCSF classes it claims; the syslog messages are RFC 5424 and
// carry the same lines.
func TestLines(t *testing.T) {
	sch := loadSchema(t)
	pol, err := policy.Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	l, caFile := tlsListener(t)
	srv := &syslogServer{}
	go srv.serve(l)
	out := filepath.Join(t.TempDir(), "posture.ocsf.jsonl")
	dir := t.TempDir()
	c, err := collector.New(collector.Config{DataDir: dir, Listen: "127.0.0.1:0", Policy: pol, DecayInterval: 100 * time.Millisecond,
		Events: collector.EventsConfig{SIEM: []siem.Config{
			{Name: "file", File: out, MaxSize: 8192, Keep: 3},
			{Name: "syslog", Syslog: "tls://" + l.Addr().String(), SyslogCA: caFile},
		}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	defer func() { cancel(); <-done }()
	conn, err := collector.DialAdmin(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	admin, gw := posturev1.NewAdminServiceClient(conn), posturev1.NewGatewayServiceClient(conn)

	tok, err := admin.CreateEnrollmentToken(ctx, &posturev1.CreateEnrollmentTokenRequest{Ttl: durationpb.New(time.Hour), Uses: 2})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 2 {
		state := t.TempDir()
		res, err := agent.Enroll(ctx, state, tok.GetToken())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.DeviceID)
		a, err := agent.New(agent.Config{StateDir: state, Interval: time.Hour, Measurer: firewallOff{}, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		actx, acancel := context.WithCancel(ctx)
		adone := make(chan struct{})
		go func() { defer close(adone); a.Run(actx) }()
		defer func() { acancel(); <-adone }()
	}
	if _, err := admin.BindDeviceUser(ctx, &posturev1.BindDeviceUserRequest{DeviceId: ids[0], User: &posturev1.DeviceUser{Email: "ada@example.com"}}); err != nil {
		t.Fatal(err)
	}
	lines := func() [][]byte {
		data, _ := os.ReadFile(out)
		for i := 1; i <= 3; i++ {
			older, _ := os.ReadFile(fmt.Sprintf("%s.%d", out, i))
			data = append(older, data...)
		}
		var ls [][]byte
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if l != "" {
				ls = append(ls, []byte(l))
			}
		}
		return ls
	}
	kinds := func() map[string]int {
		k := map[string]int{}
		for _, l := range lines() {
			var ev struct {
				Unmapped struct {
					Posture struct {
						Kind    string `json:"kind"`
						Allowed *bool  `json:"allowed"`
					} `json:"posture"`
				} `json:"unmapped"`
			}
			json.Unmarshal(l, &ev)
			name := ev.Unmapped.Posture.Kind
			if a := ev.Unmapped.Posture.Allowed; a != nil {
				name += fmt.Sprintf(" allowed=%v", *a)
			}
			k[name]++
		}
		return k
	}
	wait := func(what string, cond func(map[string]int) bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond(kinds()) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s: %v", what, kinds())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	wait("the devices' standing", func(k map[string]int) bool {
		return k["device.enrolled"] == 2 && k["check.failing"] == 2 && k["level.gained"] == 2
	})
	for _, level := range []string{"basic", "corp"} {
		if _, err := gw.CheckAccess(ctx, &posturev1.CheckAccessRequest{DeviceId: ids[0], AccessLevel: level}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: ids[1], Reason: "stolen"}); err != nil {
		t.Fatal(err)
	}
	wait("decisions and the revocation", func(k map[string]int) bool {
		return k["decision allowed=true"] >= 1 && k["decision allowed=false"] >= 1 && k["device.revoked"] == 1 && k["level.lost"] == 1
	})

	ls := lines()
	t.Logf("%d lines; the first:\n%s", len(ls), ls[0])
	// The validator itself finds what is wrong.
	var sample map[string]any
	json.Unmarshal(ls[0], &sample)
	for name, mutate := range map[string]func(m map[string]any){
		"no device":        func(m map[string]any) { delete(m, "device") },
		"wrong type_uid":   func(m map[string]any) { m["type_uid"] = 1 },
		"unknown field":    func(m map[string]any) { m["posture_score"] = 1 },
		"severity caption": func(m map[string]any) { m["severity"] = "Dire" },
	} {
		m := map[string]any{}
		for k, v := range sample {
			m[k] = v
		}
		mutate(m)
		b, _ := json.Marshal(m)
		if len(sch.validate(b)) == 0 {
			t.Errorf("the validator accepts a line with %s", name)
		}
	}
	for i, l := range ls {
		for _, p := range sch.validate(l) {
			t.Errorf("line %d: %s\n%s", i, p, l)
		}
	}
	if _, err := os.Stat(out + ".1"); err != nil {
		t.Errorf("the file never rotated at 8 KiB: %v", err)
	}
	// The decision for the bound device names its user.
	for _, l := range ls {
		var ev struct {
			ClassUID int `json:"class_uid"`
			User     struct {
				Email string `json:"email_addr"`
			} `json:"user"`
			Device struct{ UID string } `json:"device"`
		}
		json.Unmarshal(l, &ev)
		if ev.ClassUID == siem.ClassAuthorizeSession && ev.Device.UID == ids[0] && ev.User.Email != "ada@example.com" {
			t.Errorf("a decision of the bound device does not name its user: %s", l)
		}
	}

	// Syslog: the same lines, as RFC 5424 messages.
	frame := regexp.MustCompile(`^<(\d+)>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \S+ posture-collector \d+ (5019|3003) - (\{.*\})$`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		srv.mu.Lock()
		n := len(srv.frames)
		srv.mu.Unlock()
		if n >= len(ls) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	srv.mu.Lock()
	frames := slices.Clone(srv.frames)
	srv.mu.Unlock()
	uids := map[string]bool{}
	for _, f := range frames {
		m := frame.FindStringSubmatch(f)
		if m == nil {
			t.Errorf("not an RFC 5424 message of the export: %q", f)
			continue
		}
		if pri, _ := strconv.Atoi(m[1]); pri/8 != 16 {
			t.Errorf("facility %d, want local0 (16)", pri/8)
		}
		var ev struct {
			Metadata struct{ UID string } `json:"metadata"`
		}
		json.Unmarshal([]byte(m[3]), &ev)
		uids[ev.Metadata.UID] = true
		for _, p := range sch.validate([]byte(m[3])) {
			t.Errorf("syslog line: %s", p)
		}
	}
	for _, l := range ls {
		var ev struct {
			Metadata struct{ UID string } `json:"metadata"`
		}
		json.Unmarshal(l, &ev)
		if !uids[ev.Metadata.UID] {
			t.Errorf("line %s in the file is not among the syslog messages", ev.Metadata.UID)
		}
	}
}

// The lines in docs/siem.md hold to the classes they claim.
func TestSIEMDoc(t *testing.T) {
	sch := loadSchema(t)
	var lines []string
	for _, h := range []string{"## Device changes: Device Config State Change (class 5019)", "## Access decisions: Authorize Session (class 3003)"} {
		lines = append(lines, testtools.CodeBlocks(t, filepath.Join("..", "..", "docs", "siem.md"), h, "json")...)
	}
	if len(lines) != 2 {
		t.Fatalf("docs/siem.md has %d example lines, want 2", len(lines))
	}
	for _, l := range lines {
		for _, p := range sch.validate([]byte(strings.TrimSpace(l))) {
			t.Errorf("%s\n%s", p, l)
		}
	}
}
