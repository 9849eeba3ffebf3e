package signals

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// pendingSignals holds the measurements that the per-OS code returns beside
// a report section; apply copies them into their report fields.
type pendingSignals struct {
	os            osDetails
	otherVolumes  otherVolumes
	lastInstalled lastInstalledUpdate
	endpoint      endpointProtection
	autoUpdate    autoUpdate
}

// osDetails identifies the exact build beyond OSInfo.version.
type osDetails struct {
	// build is the OS build: macOS BuildVersion ("23F79"), Windows
	// CurrentBuildNumber.UBR ("22631.3880").
	build string
	// displayVersion is the Windows feature release ("23H2").
	displayVersion string
	// rapidSecurityResponse is macOS ProductVersionExtra ("(a)"): the
	// Rapid Security Response applied on top of version.
	rapidSecurityResponse string
}

// otherVolumes lists fixed data volumes beyond the system volume and swap.
// They do not decide DiskEncryption.system_encrypted; removable media are
// left out.
type otherVolumes struct {
	meta    *posturev1.SignalMeta
	volumes []*posturev1.Volume
}

// lastInstalledUpdate is the newest installed OS update. meta is nil where
// the agent does not measure it.
type lastInstalledUpdate struct {
	meta        *posturev1.SignalMeta
	id          string // "KB5039212"
	installedAt time.Time
}

// endpointProtection reports the platform's built-in malware defences.
type endpointProtection struct {
	meta    *posturev1.SignalMeta
	product string
	// enabled is true when every protection the platform offers is on:
	// Defender real-time protection, or SIP and Gatekeeper.
	enabled bool
	// Windows: Microsoft Defender Antivirus.
	realTimeProtection bool
	signatureAgeDays   uint32
	tamperProtection   bool
	runningMode        string // AMRunningMode: "Normal", "Passive Mode", "EDR Block Mode"
	// macOS.
	systemIntegrityProtection bool
	gatekeeper                bool
	detail                    string
}

// autoUpdate reports whether the OS installs updates by itself.
type autoUpdate struct {
	meta *posturev1.SignalMeta
	// enabled is true when updates (at least security updates) are
	// downloaded and installed without a person acting.
	enabled bool
	// mechanism names what installs them: "unattended-upgrades",
	// "dnf-automatic", "softwareupdate", "Windows Update".
	mechanism string
	detail    string
}

// apply copies the measurements into the report. A firewall or screen lock
// verdict's explanation goes to detail: reason is for statuses other than OK.
func (p pendingSignals) apply(r *posturev1.PostureReport) {
	if f := r.Firewall; f != nil && f.Meta.GetStatus() == posturev1.Status_STATUS_OK && f.Detail == "" {
		f.Detail, f.Meta.Reason = f.Meta.GetReason(), ""
	}
	if s := r.ScreenLock; s != nil && s.Meta.GetStatus() == posturev1.Status_STATUS_OK && s.Detail == "" {
		s.Detail, s.Meta.Reason = s.Meta.GetReason(), ""
	}
	if r.Os != nil {
		r.Os.Build, r.Os.DisplayVersion, r.Os.RapidSecurityResponse = p.os.build, p.os.displayVersion, p.os.rapidSecurityResponse
	}
	if r.Disk != nil && p.otherVolumes.meta != nil {
		r.Disk.OtherVolumes = &posturev1.OtherVolumes{Meta: p.otherVolumes.meta, Volumes: p.otherVolumes.volumes}
	}
	if m := p.lastInstalled.meta; m != nil {
		u := &posturev1.InstalledUpdate{Meta: m, Id: p.lastInstalled.id}
		if !p.lastInstalled.installedAt.IsZero() {
			u.InstalledAt = timestamppb.New(p.lastInstalled.installedAt)
		}
		r.LastInstalledUpdate = u
	}
	if e := p.endpoint; e.meta != nil {
		r.EndpointProtection = &posturev1.EndpointProtection{
			Meta: e.meta, Product: e.product, Enabled: e.enabled,
			RealTimeProtection: e.realTimeProtection, SignatureAgeDays: e.signatureAgeDays,
			TamperProtection: e.tamperProtection, RunningMode: e.runningMode,
			SystemIntegrityProtection: e.systemIntegrityProtection, Gatekeeper: e.gatekeeper, Detail: e.detail,
		}
	}
	if a := p.autoUpdate; a.meta != nil {
		r.AutoUpdate = &posturev1.AutoUpdate{Meta: a.meta, Enabled: a.enabled, Mechanism: a.mechanism, Detail: a.detail}
	}
}
