package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/posture-project/posture/agent/browsercert"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// localEvery is the least time between two browser certificates issued
// to one local user: a loop of requests costs the collector one a minute.
const localEvery = 10 * time.Second

// serveLocal serves the agent's local socket until ctx ends: any local
// user may ask for a browser certificate for a key of their own, and gets
// one naming them, as the kernel says who they are (the socket's peer
// credentials); nobody gets the agent's own keys.
func (a *Agent) serveLocal(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("local socket directory: %w", err)
	}
	if err := restrictLocalDir(filepath.Dir(path)); err != nil {
		return err
	}
	os.Remove(path) // a socket left by an agent that did not stop cleanly
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("local socket %s: %w", path, err)
	}
	if err := openLocalSocket(path); err != nil {
		l.Close()
		return fmt.Errorf("local socket %s: %w", path, err)
	}
	go func() { <-ctx.Done(); l.Close() }()
	var mu sync.Mutex
	last := map[string]time.Time{}
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				os.Remove(path)
				return nil
			}
			return err
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(60 * time.Second))
			var req browsercert.Request
			resp := browsercert.Response{}
			name, err := peerUser(conn)
			if err == nil {
				err = json.NewDecoder(conn).Decode(&req)
			}
			if err == nil {
				resp, err = a.answerLocal(ctx, name, req, func() bool {
					mu.Lock()
					defer mu.Unlock()
					if time.Since(last[name]) < localEvery {
						return false
					}
					last[name] = time.Now()
					return true
				})
			}
			if err != nil {
				resp.Error = err.Error()
				a.log.Warn("local request refused", "user", name, "op", req.Op, "err", err)
			}
			json.NewEncoder(conn).Encode(resp)
		}()
	}
}

// answerLocal answers one request of local user name.
func (a *Agent) answerLocal(ctx context.Context, name string, req browsercert.Request, allow func() bool) (browsercert.Response, error) {
	cert, err := pki.ReadCertificate(filepath.Join(a.cfg.StateDir, certFile))
	if err != nil {
		return browsercert.Response{}, fmt.Errorf("the agent has no device certificate: %w", err)
	}
	resp := browsercert.Response{DeviceID: a.enr.DeviceID, DeviceCertSerial: pki.SerialHex(cert), User: name}
	switch req.Op {
	case browsercert.OpDevice:
		return resp, nil
	case browsercert.OpBrowserCert:
	default:
		return resp, fmt.Errorf("unknown request %q", req.Op)
	}
	if !allow() {
		return resp, fmt.Errorf("a browser certificate was issued to %s less than %s ago; wait", name, localEvery)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ans, err := posturev1.NewReportServiceClient(a.conn).IssueBrowserCertificate(ctx, &posturev1.IssueBrowserCertificateRequest{PublicKey: req.PublicKey, User: name})
	if err != nil {
		return resp, fmt.Errorf("the collector did not issue a browser certificate: %w", err)
	}
	resp.Certificate, resp.CA = ans.GetCertificate(), ans.GetCaCertificate()
	a.log.Info("browser certificate issued", "user", name)
	return resp, nil
}

// localUserName names the account of uid as the collector accepts it:
// letters, digits and ._- only, at most 64 characters; an account the
// system cannot name is "uid-N".
func localUserName(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	u, err := user.LookupId(id)
	if err != nil || u.Username == "" {
		return "uid-" + id
	}
	return accountName(u.Username)
}

// accountName is an account name as the collector accepts it: letters,
// digits and ._- only (others become _), at most 64 characters.
func accountName(username string) string {
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-', r == '.':
			return r
		}
		return '_'
	}, username)
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}

// errNoPeerCred is peerUser's error where the platform tells no peer.
var errNoPeerCred = errors.New("this platform does not tell who is on the other end of the agent's socket")
