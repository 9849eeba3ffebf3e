package jsonview

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

func TestMarshal(t *testing.T) {
	tests := []struct {
		name string
		in   *posturev1.ListDevicesResponse
		want []string
	}{
		{"zero values are there", &posturev1.ListDevicesResponse{Devices: []*posturev1.DevicePosture{{Device: &posturev1.Device{Id: "a"}}}},
			[]string{`"score": 0`, `"state": "unspecified"`, `"lastSeen": null`, `"checks": []`, `"nextPageToken": ""`, `"measuredBoot": null`}},
		{"words, numbers, times", &posturev1.ListDevicesResponse{Devices: []*posturev1.DevicePosture{{
			Device: &posturev1.Device{Id: "b", State: posturev1.DeviceState_DEVICE_STATE_ACTIVE, Assurance: posturev1.IdentityAssurance_IDENTITY_ASSURANCE_TPM_EK_VERIFIED,
				LastSeq: 1 << 40, LastSeen: timestamppb.New(timestamppb.Now().AsTime().Truncate(1e9))},
			Checks:    []*posturev1.CheckResult{{Name: "disk", Outcome: posturev1.Outcome_OUTCOME_NOT_APPLICABLE, EvidenceAge: durationpb.New(1500e6)}},
			ReportAge: durationpb.New(0),
		}}},
			[]string{`"state": "active"`, `"assurance": "tpm_ek_verified"`, `"lastSeq": 1099511627776`, `"outcome": "not_applicable"`, `"evidenceAge": "1.500s"`, `"reportAge": "0s"`}},
		{"hostile text is inert", &posturev1.ListDevicesResponse{Devices: []*posturev1.DevicePosture{{Device: &posturev1.Device{Hostname: "a\x1b[2J\u202eb<&>"}}}},
			[]string{`"hostname": "a\u001b[2J\u202eb<&>"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Marshal(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(b), w) {
					t.Errorf("lacks %s:\n%s", w, b)
				}
			}
			var back posturev1.ListDevicesResponse
			if err := Unmarshal(b, &back); err != nil {
				t.Fatalf("Unmarshal: %v\n%s", err, b)
			}
			if d := cmp.Diff(tt.in, &back, protocmp.Transform()); d != "" {
				t.Errorf("round trip (-in +back):\n%s", d)
			}
		})
	}
}

func TestEnumWord(t *testing.T) {
	for v, want := range map[posturev1.DeviceState]string{
		posturev1.DeviceState_DEVICE_STATE_ACTIVE:  "active",
		posturev1.DeviceState_DEVICE_STATE_PENDING: "pending",
	} {
		if got := EnumWord(v.Descriptor().Values().ByNumber(v.Number())); got != want {
			t.Errorf("EnumWord(%v) = %q, want %q", v, got, want)
		}
	}
	if err := Unmarshal([]byte(`{"devices":[{"device":{"state":"dormant"}}]}`), &posturev1.ListDevicesResponse{}); err == nil || !strings.Contains(err.Error(), `"dormant" is not a value of posture.v1.DeviceState`) {
		t.Errorf("an unknown word: %v", err)
	}
}
