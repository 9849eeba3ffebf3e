package e2e

import (
	"net"
	"sync"
	"testing"
)

// testProxy forwards TCP connections to a backend (the collector) and can
// play a bad network in between:
//   - paused, it holds every byte and every close in both directions
//     without closing anything: to either end the other looks like a
//     stopped process or a path that silently drops packets;
//   - losing replies, it discards what the backend sends (an
//     acknowledgement that never arrives);
//   - offline, it cuts every connection and refuses new ones.
type testProxy struct {
	l       net.Listener
	backend string

	mu       sync.Mutex
	flowing  chan struct{} // closed while bytes flow
	closed   chan struct{}
	deaf     bool // discard backend-to-client bytes
	offline  bool
	conns    []net.Conn
	accepted int
}

// startProxy listens on loopback and forwards to backend until the test
// ends.
func startProxy(t testing.TB, backend string) *testProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testProxy{l: l, backend: backend, flowing: make(chan struct{}), closed: make(chan struct{})}
	close(p.flowing)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *testProxy) addr() string { return p.l.Addr().String() }

// pause stops forwarding.
func (p *testProxy) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flowing = make(chan struct{})
}

// resume forwards what was held and everything after it.
func (p *testProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.flowing:
	default:
		close(p.flowing)
	}
}

// loseReplies discards what the backend sends until goOnline.
func (p *testProxy) loseReplies() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deaf = true
}

// goOffline cuts every connection and refuses new ones until goOnline.
func (p *testProxy) goOffline() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.offline = true
	p.closeConns()
}

// goOnline forwards new connections in both directions again.
func (p *testProxy) goOnline() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.offline, p.deaf = false, false
}

// connections is how many connections the proxy has forwarded.
func (p *testProxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

func (p *testProxy) close() {
	p.l.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.closed:
		return
	default:
	}
	close(p.closed)
	p.closeConns()
}

// closeConns closes every open connection; p.mu is held.
func (p *testProxy) closeConns() {
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *testProxy) serve() {
	for {
		client, err := p.l.Accept()
		if err != nil {
			return
		}
		backend, err := net.Dial("tcp", p.backend)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		if p.offline {
			p.mu.Unlock()
			client.Close()
			backend.Close()
			continue
		}
		p.conns = append(p.conns, client, backend)
		p.accepted++
		p.mu.Unlock()
		go p.pipe(backend, client, false)
		go p.pipe(client, backend, true)
	}
}

// pipe copies src to dst, waiting while paused before passing on data or
// the end of src; replies (backend to client) are dropped while lost.
func (p *testProxy) pipe(dst, src net.Conn, reply bool) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		lose, ok := p.wait(reply)
		if !ok {
			return
		}
		if n > 0 && !lose {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// wait waits until the proxy is not paused and says whether to drop a
// reply; ok is false once the proxy is closed.
func (p *testProxy) wait(reply bool) (lose, ok bool) {
	p.mu.Lock()
	flowing := p.flowing
	p.mu.Unlock()
	select {
	case <-flowing:
	case <-p.closed:
		return false, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return reply && p.deaf, true
}
