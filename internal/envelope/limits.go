package envelope

import (
	"fmt"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/posture-project/posture/internal/attest"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Limits on what a signed report may carry. The collector stores every
// report and keeps texts of each device's latest one in memory (its OS
// line, the reasons of its verdicts): one device must not be able to grow
// either by sending large reports, and gRPC's message limit bounds a
// message, not what is kept of it. Each limit is far above what real
// agents send. VerifySoftware and VerifyTPM refuse a report over any of
// them with ErrMalformed, and the agent clips its reports to them before
// signing (ClipReport), so that a long line of some command's output in a
// reason does not cost the whole report.
const (
	// MaxReportSize bounds the serialized PostureReport. Real reports are
	// 0.5–2 KB (an agent on Debian with one volume sends about 700 bytes);
	// 64 KiB holds hundreds of volumes.
	MaxReportSize = 64 << 10
	// MaxProofSize bounds a report's proof besides the TPM event log: a
	// quote is its TPMS_ATTEST (about 150 bytes), an ECDSA TPMT_SIGNATURE
	// (about 70) and at most 24 PCR values of 32 bytes; a software
	// signature is about 72 bytes.
	MaxProofSize = 4 << 10
	// MaxEventLogSize bounds the TCG event log a quote carries.
	MaxEventLogSize = attest.MaxEventLogSize

	// MaxNameLen bounds a report's names, versions and identifiers, in
	// bytes. Real ones are far shorter: uname fields (kernel version,
	// hostname) are at most 64 bytes, DNS names 253, os-release NAME and
	// VERSION_ID, Windows ProductName and macOS versions under 64.
	MaxNameLen = 256
	// MaxTextLen bounds texts that explain a measurement (every SignalMeta
	// reason and the details) and paths (a volume's mount point and
	// device), in bytes. An agent's reasons and details run to a few
	// hundred bytes, with at most the first line of a failing command's
	// output; mount points rarely reach 100.
	MaxTextLen = 1024
	// MaxListLen bounds the entries of a repeated field: the volumes of a
	// disk section. A machine has a few system and swap volumes, and a
	// storage server some dozens of data volumes.
	MaxListLen = 256
	// maxBytesLen bounds bytes fields: prev_digest, a SHA-256 digest.
	maxBytesLen = 64
)

// CheckReport checks every field of r a device fills against the limits
// above: string and bytes fields by length, repeated fields by entries. It
// returns an error naming the first field over its limit ("os.name is
// 1048576 bytes; at most 256").
//
// It runs on every report, so it reads the fields directly rather than
// through protoreflect, which costs several microseconds a report;
// TestCheckReportLimits finds every field from the descriptors and fails
// for one this does not check.
func CheckReport(r *posturev1.PostureReport) error {
	var c limitCheck
	c.name("device_id", r.GetDeviceId())
	c.bytes("prev_digest", r.GetPrevDigest())
	if a := r.GetAgent(); a != nil {
		c.name("agent.version", a.GetVersion())
		c.name("agent.identity", a.GetIdentity())
	}
	if o := r.GetOs(); o != nil {
		c.meta("os.meta", o.GetMeta())
		c.name("os.platform", o.GetPlatform())
		c.name("os.name", o.GetName())
		c.name("os.version", o.GetVersion())
		c.name("os.kernel_version", o.GetKernelVersion())
		c.name("os.arch", o.GetArch())
		c.name("os.hostname", o.GetHostname())
		c.name("os.build", o.GetBuild())
		c.name("os.display_version", o.GetDisplayVersion())
		c.name("os.rapid_security_response", o.GetRapidSecurityResponse())
	}
	if d := r.GetDisk(); d != nil {
		c.meta("disk.meta", d.GetMeta())
		c.volumes("disk.volumes", d.GetVolumes())
		if o := d.GetOtherVolumes(); o != nil {
			c.meta("disk.other_volumes.meta", o.GetMeta())
			c.volumes("disk.other_volumes.volumes", o.GetVolumes())
		}
	}
	c.meta("secure_boot.meta", r.GetSecureBoot().GetMeta())
	if u := r.GetUpdates(); u != nil {
		c.meta("updates.meta", u.GetMeta())
		c.name("updates.manager", u.GetManager())
	}
	if f := r.GetFirewall(); f != nil {
		c.meta("firewall.meta", f.GetMeta())
		c.name("firewall.product", f.GetProduct())
		c.text("firewall.detail", f.GetDetail())
	}
	if s := r.GetScreenLock(); s != nil {
		c.meta("screen_lock.meta", s.GetMeta())
		c.text("screen_lock.detail", s.GetDetail())
	}
	if e := r.GetEndpointProtection(); e != nil {
		c.meta("endpoint_protection.meta", e.GetMeta())
		c.name("endpoint_protection.product", e.GetProduct())
		c.name("endpoint_protection.running_mode", e.GetRunningMode())
		c.text("endpoint_protection.detail", e.GetDetail())
	}
	if a := r.GetAutoUpdate(); a != nil {
		c.meta("auto_update.meta", a.GetMeta())
		c.name("auto_update.mechanism", a.GetMechanism())
		c.text("auto_update.detail", a.GetDetail())
	}
	if u := r.GetLastInstalledUpdate(); u != nil {
		c.meta("last_installed_update.meta", u.GetMeta())
		c.name("last_installed_update.id", u.GetId())
	}
	return c.err
}

// limitCheck keeps the first field found over its limit.
type limitCheck struct{ err error }

func (c *limitCheck) size(path, index string, n, max int, unit string) {
	if n > max && c.err == nil {
		c.err = fmt.Errorf("%s%s is %d %s; at most %d", path, index, n, unit, max)
	}
}

func (c *limitCheck) name(path, s string)         { c.size(path, "", len(s), MaxNameLen, "bytes") }
func (c *limitCheck) text(path, s string)         { c.size(path, "", len(s), MaxTextLen, "bytes") }
func (c *limitCheck) bytes(path string, b []byte) { c.size(path, "", len(b), maxBytesLen, "bytes") }

func (c *limitCheck) meta(path string, m *posturev1.SignalMeta) {
	c.size(path, ".reason", len(m.GetReason()), MaxTextLen, "bytes")
}

func (c *limitCheck) volumes(path string, vs []*posturev1.Volume) {
	c.size(path, "", len(vs), MaxListLen, "entries")
	if c.err != nil {
		return
	}
	for i, v := range vs {
		if len(v.GetMountPoint()) > MaxTextLen || len(v.GetDevice()) > MaxTextLen || len(v.GetMethod()) > MaxNameLen || len(v.GetDetail()) > MaxTextLen {
			at := path + "[" + strconv.Itoa(i) + "]"
			c.size(at, ".mount_point", len(v.GetMountPoint()), MaxTextLen, "bytes")
			c.size(at, ".device", len(v.GetDevice()), MaxTextLen, "bytes")
			c.size(at, ".method", len(v.GetMethod()), MaxNameLen, "bytes")
			c.size(at, ".detail", len(v.GetDetail()), MaxTextLen, "bytes")
			return
		}
	}
}

// ClipReport shortens r to the limits CheckReport checks: a string longer
// than its limit is cut, at a character boundary, and ends in "…"; a list
// keeps its first MaxListLen entries. The agent calls it before signing,
// so that an unusually long text costs its tail rather than the report.
func ClipReport(r *posturev1.PostureReport) {
	clip(r.ProtoReflect())
}

// textFields are the string fields, by name, that MaxTextLen bounds; every
// other string field is a name (MaxNameLen).
var textFields = map[protoreflect.Name]bool{"reason": true, "detail": true, "mount_point": true, "device": true}

func clip(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		max := MaxNameLen
		if textFields[fd.Name()] {
			max = MaxTextLen
		}
		switch {
		case fd.IsMap():
		case fd.IsList():
			l := m.Mutable(fd).List()
			if l.Len() > MaxListLen {
				l.Truncate(MaxListLen)
			}
			for i := range l.Len() {
				switch fd.Kind() {
				case protoreflect.StringKind:
					if s := l.Get(i).String(); len(s) > max {
						l.Set(i, protoreflect.ValueOfString(clipString(s, max)))
					}
				case protoreflect.MessageKind:
					clip(l.Get(i).Message())
				}
			}
		case fd.Kind() == protoreflect.StringKind:
			if s := v.String(); len(s) > max {
				m.Set(fd, protoreflect.ValueOfString(clipString(s, max)))
			}
		case fd.Kind() == protoreflect.MessageKind:
			clip(m.Mutable(fd).Message())
		}
		return true
	})
}

// clipString cuts s to at most max bytes, at a character boundary, ending
// in "…".
func clipString(s string, max int) string {
	const mark = "…"
	cut := max - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
