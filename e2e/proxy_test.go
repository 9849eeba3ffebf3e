package e2e

import (
	"net"
	"sync"
	"testing"
)

// pausableProxy forwards TCP connections to a backend. Paused, it holds
// every byte and every close in both directions without closing anything:
// to either end the other looks like a stopped process or a network path
// that silently drops packets.
type pausableProxy struct {
	l       net.Listener
	backend string

	mu      sync.Mutex
	flowing chan struct{} // closed while bytes flow
	closed  chan struct{}
	conns   []net.Conn
}

// startPausableProxy listens on loopback and forwards to backend until the
// test ends.
func startPausableProxy(t testing.TB, backend string) *pausableProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pausableProxy{l: l, backend: backend, flowing: make(chan struct{}), closed: make(chan struct{})}
	close(p.flowing)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *pausableProxy) addr() string { return p.l.Addr().String() }

// pause stops forwarding.
func (p *pausableProxy) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.flowing = make(chan struct{})
}

// resume forwards what was held and everything after it.
func (p *pausableProxy) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.flowing:
	default:
		close(p.flowing)
	}
}

func (p *pausableProxy) close() {
	p.l.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.closed:
		return
	default:
	}
	close(p.closed)
	for _, c := range p.conns {
		c.Close()
	}
}

func (p *pausableProxy) serve() {
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
		p.conns = append(p.conns, client, backend)
		p.mu.Unlock()
		go p.pipe(backend, client)
		go p.pipe(client, backend)
	}
}

// pipe copies src to dst, waiting while paused before passing on data or
// the end of src.
func (p *pausableProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !p.waitFlowing() {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// waitFlowing waits until the proxy is not paused; false once it is closed.
func (p *pausableProxy) waitFlowing() bool {
	p.mu.Lock()
	flowing := p.flowing
	p.mu.Unlock()
	select {
	case <-flowing:
		return true
	case <-p.closed:
		return false
	}
}
