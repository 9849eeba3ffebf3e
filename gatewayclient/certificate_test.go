package gatewayclient

import (
	"crypto/x509"
	"math/big"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// CheckCertificate counts a device certificate only as the collector
// names it in certificate_tag: by serial and public key, or by serial
// alone for a certificate whose key the collector has not recorded. So a
// certificate with the device's serial but another key is refused once the
// key is recorded; and a client that compared the serial alone (as before
// keys were recorded) refuses a certificate whose key is: an old client
// fails closed against a new collector.
func TestCheckCertificateTag(t *testing.T) {
	spiffe := &url.URL{Scheme: "spiffe", Host: "example.test", Path: "/device/d"}
	cert := func(serial int64, key string) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(serial), URIs: []*url.URL{spiffe}, RawSubjectPublicKeyInfo: []byte(key)}
	}
	genuine, minted, other := cert(0x1f, "genuine key"), cert(0x1f, "another key"), cert(0x20, "genuine key")
	bound := pki.CertTag("1f", pki.KeySHA256(genuine))
	serialOnly := pki.CertTag("1f", nil)
	if CertificateTag(genuine) != bound {
		t.Fatalf("CertificateTag = %x, want the tag over serial and key %x", CertificateTag(genuine), bound)
	}
	for _, tt := range []struct {
		name string
		tag  uint64
		cert *x509.Certificate
		want bool
	}{
		{"recorded key, genuine", bound, genuine, true},
		{"recorded key, same serial with another key", bound, minted, false},
		{"recorded key, another serial", bound, other, false},
		{"key not recorded, genuine", serialOnly, genuine, true},
		{"key not recorded, same serial with another key", serialOnly, minted, true},
		{"key not recorded, another serial", serialOnly, other, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := &funcCollector{watch: func(_ int, _ *posturev1.WatchPostureRequest, st grpc.ServerStreamingServer[posturev1.PostureEvent]) error {
				dev := &posturev1.DeviceDecision{DeviceId: "d", SpiffeId: spiffe.String(), AllowedLevels: []string{"basic"}, CertificateTag: tt.tag}
				if err := send(st, &posturev1.PostureEvent{Revision: 1, Event: &posturev1.PostureEvent_Device{Device: dev}}, snapshotEnd(1, false, 0)); err != nil {
					return err
				}
				<-st.Context().Done()
				return nil
			}}
			c := run(t, srv, &fakeClock{})
			eventually(t, "synced", c.Synced)
			d := c.CheckCertificate(tt.cert, "basic")
			if d.Allowed != tt.want {
				t.Fatalf("CheckCertificate = %+v, want allowed %v", d, tt.want)
			}
			if !d.Allowed && !strings.Contains(d.Reason, "serial and key") {
				t.Errorf("reason %q does not say the serial and key must match", d.Reason)
			}
		})
	}
	// A client from before compared SHA-256 of the serial alone: against
	// a tag over serial and key it refuses even the genuine certificate.
	if serialOnly == bound {
		t.Error("the tag over serial and key equals the serial's: a client from before would accept any key")
	}
}
