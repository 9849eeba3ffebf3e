package agent

import (
	"fmt"
	"path/filepath"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/posture-project/posture/agent/identity"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Identity kinds an agent can be enrolled with.
const (
	IdentityAuto     = "auto"
	IdentitySoftware = identity.KindSoftware
	IdentityTPM      = identity.KindTPM
)

// deviceIdentity is what the agent needs of its identity: enrollment and
// renewal proofs and report seals.
type deviceIdentity interface {
	Kind() string
	Claim() *posturev1.IdentityClaim
	Answer(ch *posturev1.EnrollChallenge, tlsKey []byte) (*posturev1.EnrollAnswer, error)
	AnswerRenewal(nonce, tlsKey []byte) (*posturev1.RenewAnswer, error)
	Seal(nonce, report []byte) (*posturev1.SignedReport, error)
}

// openIdentity opens the identity of the given kind. With "auto" it uses
// the TPM when one is reachable and otherwise falls back to software,
// returning a note that says so.
func openIdentity(stateDir, kind, tpmAddr, eventLog string, dev transport.TPMCloser) (deviceIdentity, string, error) {
	switch kind {
	case IdentitySoftware:
		id, err := identity.LoadOrCreateSoftware(filepath.Join(stateDir, identityFile))
		return id, "", err
	case IdentityTPM:
		id, err := openTPM(stateDir, tpmAddr, eventLog, dev)
		return id, "", err
	case IdentityAuto, "":
		id, err := openTPM(stateDir, tpmAddr, eventLog, dev)
		if err == nil {
			return id, "", nil
		}
		sw, swErr := identity.LoadOrCreateSoftware(filepath.Join(stateDir, identityFile))
		return sw, fmt.Sprintf("no TPM reachable (%v): using a software identity, which policy may rank lower", err), swErr
	}
	return nil, "", fmt.Errorf("identity %q: want auto, tpm or software", kind)
}

func openTPM(stateDir, addr, eventLog string, dev transport.TPMCloser) (*identity.TPMIdentity, error) {
	if dev == nil {
		var err error
		if dev, err = identity.OpenTPMDevice(addr); err != nil {
			return nil, err
		}
	}
	t, err := identity.NewTPM(dev, stateDir, identity.TPMOptions{})
	if err != nil {
		dev.Close()
		return nil, err
	}
	return identity.NewTPMIdentity(t, eventLog), nil
}
