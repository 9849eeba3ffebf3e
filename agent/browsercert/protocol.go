// Package browsercert puts a device's browser certificate where the
// device user's browsers find it. The agent, which runs as root (SYSTEM on
// Windows), never hands out its own keys: a per-user step, run at login
// (posture-agent browser-cert), makes a key of the user's own, asks the
// local agent over its socket for a certificate (the agent names the user
// by the socket's peer credentials and asks the collector over its
// authenticated connection), and imports key and certificate into the
// user's certificate store: the NSS database ~/.pki/nssdb on Linux (Chrome,
// Chromium; Firefox with its own profile database), the login keychain on
// macOS, the CurrentUser store on Windows.
package browsercert

import (
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// Ops of the local socket's protocol: one JSON request, one JSON answer.
const (
	// OpDevice asks which device the agent is and which certificate it
	// holds; a browser certificate issued under another is renewed.
	OpDevice = "device"
	// OpBrowserCert asks for a browser certificate for PublicKey.
	OpBrowserCert = "browser-cert"
)

// Request is what the per-user step asks the agent.
type Request struct {
	Op string `json:"op"`
	// PublicKey is the PKIX DER ECDSA P-256 public key, for OpBrowserCert.
	PublicKey []byte `json:"public_key,omitempty"`
}

// Response is the agent's answer.
type Response struct {
	// Error says why the request failed, for the user.
	Error string `json:"error,omitempty"`
	// DeviceID and DeviceCertSerial name the device and the certificate
	// it holds now.
	DeviceID         string `json:"device_id,omitempty"`
	DeviceCertSerial string `json:"device_cert_serial,omitempty"`
	// User is the account the agent took the caller for.
	User string `json:"user,omitempty"`
	// Certificate and CA are DER, for OpBrowserCert.
	Certificate []byte `json:"certificate,omitempty"`
	CA          []byte `json:"ca,omitempty"`
}

// Ask sends one request to the agent's local socket and returns its answer.
func Ask(socket string, req Request) (Response, error) {
	conn, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return Response{}, fmt.Errorf("reach the Posture agent at %s (is it running? posture-agent status): %w", socket, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return Response{}, fmt.Errorf("ask the Posture agent: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("read the Posture agent's answer: %w", err)
	}
	if resp.Error != "" {
		return resp, fmt.Errorf("the Posture agent refused: %s", resp.Error)
	}
	return resp, nil
}
