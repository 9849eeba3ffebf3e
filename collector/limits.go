package collector

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// What a client may hold of the collector's listeners. A client without a
// certificate may enroll and ask the health service; whatever it holds
// meanwhile (a connection, a call waiting for its first message) costs the
// collector memory, so each is bounded in number and in time, per peer
// address and in all. Clients with a certificate are bound only by
// maxStreamsPerConn: they are enrolled, and revocable.
const (
	// maxStreamsPerConn bounds the concurrent calls on one connection of
	// the TLS listener (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; gRPC's own
	// default is unlimited). A gateway's calls are answered from memory
	// in well under a millisecond, so a gateway multiplexing CheckAccess
	// or ext_authz on one connection has a few dozen in flight at 100,000
	// calls a second; an agent has one report stream. A client that
	// reaches it anyway waits (gRPC) or opens another connection (Envoy).
	maxStreamsPerConn = 1000
	// anonConnsPerPeer and anonConns bound the connections whose TLS
	// handshake presented no client certificate, from one peer address
	// and from all together. Agents enroll one connection at a time, so
	// 32 lets a building behind one NAT enroll 32 machines at once.
	anonConnsPerPeer = 32
	anonConns        = 1024
	// anonStreamsPerPeer and anonStreams bound the calls open at once on
	// such connections (an enrollment, a health check or watch), from the
	// moment their headers arrive: a call that has not sent its message
	// yet is held too. Each may hold a message up to maxRecvMsgSize while
	// it arrives, so together they hold at most about 140 MiB, and as
	// little as 12 KiB each when idle. An enrollment takes milliseconds
	// with a software key and seconds with a TPM.
	anonStreamsPerPeer = 16
	anonStreams        = 128
	// refusedLinger is how long a connection refused for its peer's
	// count stays open to answer its calls with why (RESOURCE_EXHAUSTED),
	// and maxRefusedConns how many may do so at once; beyond that a
	// refused connection is closed at once, saying nothing. A refused
	// call waits as long for its message (see tapAnonymous).
	refusedLinger   = 2 * time.Second
	maxRefusedConns = 64
	// handshakeTimeout bounds a new connection's TLS handshake and HTTP/2
	// preface (gRPC's default is 120 s).
	handshakeTimeout = 10 * time.Second
	// maxConnIdle closes a connection that has had no call for this long
	// (agents and gatewayclient always have a stream open; a gateway
	// that calls less often reconnects).
	maxConnIdle = 5 * time.Minute
	// maxHeaderListSize bounds a call's headers (gRPC's default is 16
	// MiB); the collector's clients send a few hundred bytes.
	maxHeaderListSize = 16 << 10
	// enrollStepWait bounds each wait of an enrollment for the agent: its
	// first message, sent as soon as the call opens, and its answer to the
	// challenge, which a TPM makes in a few seconds. enrollWait bounds the
	// whole enrollment. The agent itself gives up after 30 s.
	enrollStepWait = 30 * time.Second
	enrollWait     = 60 * time.Second
	// The failed-enrollment throttle (failThrottle): a peer may fail
	// throttleBurst enrollments at once (a mistyped token, a script run
	// again), then one every throttleInterval; throttlePeers are tracked
	// at most, those that failed least recently forgotten first.
	throttleBurst    = 20
	throttleInterval = 5 * time.Second
	throttlePeers    = 10000
	// refusalSummaryInterval is how often refusals are summarized in the
	// log, a line per peer and kind (the first refusal of each is logged
	// at once), naming at most refusalPeers peers.
	refusalSummaryInterval = time.Minute
	refusalPeers           = 256
	// frontAnonConnsPerPeer and frontAnonConns bound the TLS connections
	// of a gateway front end (/check) from clients that presented no
	// certificate and have not yet authenticated a request with a bearer
	// secret on them.
	frontAnonConnsPerPeer = 64
	frontAnonConns        = 1024
)

// limits are the bounds of one collector: the constants above, which tests
// shorten through Config.limits.
type limits struct {
	maxStreamsPerConn                     uint32
	anonConnsPerPeer, anonConns           int
	anonStreamsPerPeer, anonStreams       int
	refusedLinger                         time.Duration
	maxRefusedConns                       int
	handshakeTimeout, maxConnIdle         time.Duration
	enrollStepWait, enrollWait            time.Duration
	throttleBurst                         int
	throttleInterval                      time.Duration
	throttlePeers                         int
	refusalSummaryInterval                time.Duration
	refusalPeers                          int
	frontAnonConnsPerPeer, frontAnonConns int
}

// setDefaults fills what is unset.
func (l *limits) setDefaults() {
	orDefault(&l.maxStreamsPerConn, maxStreamsPerConn)
	orDefault(&l.anonConnsPerPeer, anonConnsPerPeer)
	orDefault(&l.anonConns, anonConns)
	orDefault(&l.anonStreamsPerPeer, anonStreamsPerPeer)
	orDefault(&l.anonStreams, anonStreams)
	orDefault(&l.refusedLinger, refusedLinger)
	orDefault(&l.maxRefusedConns, maxRefusedConns)
	orDefault(&l.handshakeTimeout, handshakeTimeout)
	orDefault(&l.maxConnIdle, maxConnIdle)
	orDefault(&l.enrollStepWait, enrollStepWait)
	orDefault(&l.enrollWait, enrollWait)
	orDefault(&l.throttleBurst, throttleBurst)
	orDefault(&l.throttleInterval, throttleInterval)
	orDefault(&l.throttlePeers, throttlePeers)
	orDefault(&l.refusalSummaryInterval, refusalSummaryInterval)
	orDefault(&l.refusalPeers, refusalPeers)
	orDefault(&l.frontAnonConnsPerPeer, frontAnonConnsPerPeer)
	orDefault(&l.frontAnonConns, frontAnonConns)
}

func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// peerAddr is a client as the limits count it: its IPv4 address, or the
// /64 network of its IPv6 address (a host commonly has a /64 to itself,
// and counting its addresses one by one would let it open as many as it
// likes). It is the TCP peer: behind a load balancer that does not keep
// client addresses, every client is the balancer.
type peerAddr struct{ p netip.Prefix }

// peerOf is the peer of a connection's remote address.
func peerOf(a net.Addr) (peerAddr, bool) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case nil:
		return peerAddr{}, false
	default:
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return peerAddr{}, false
		}
	}
	ip := ap.Addr().Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return peerAddr{}, false
	}
	return peerAddr{p}, true
}

func (p peerAddr) String() string {
	if !p.p.IsValid() {
		return "unknown"
	}
	if p.p.Addr().Is4() {
		return p.p.Addr().String()
	}
	return p.p.String()
}

// counter counts what peers hold at once (connections, calls) against a
// bound per peer and one for all of them. Its memory is bounded by the
// latter: a peer holding nothing is forgotten.
type counter struct {
	mu             sync.Mutex
	perPeer, total int
	n              int
	peers          map[peerAddr]int
}

func newCounter(perPeer, total int) *counter {
	return &counter{perPeer: perPeer, total: total, peers: map[peerAddr]int{}}
}

// Which bound refused a count.
const (
	boundPeer  = "per_peer"
	boundTotal = "total"
)

// acquire counts one more for p and returns the function that undoes it
// (once, however often it is called); or, when p or everyone together
// holds as much as allowed, which bound refused it.
func (c *counter) acquire(p peerAddr) (release func(), refused string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.peers[p] >= c.perPeer:
		return nil, boundPeer
	case c.n >= c.total:
		return nil, boundTotal
	}
	c.peers[p]++
	c.n++
	var once sync.Once
	return func() { once.Do(func() { c.release(p) }) }, ""
}

func (c *counter) release(p peerAddr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n--
	if c.peers[p]--; c.peers[p] <= 0 {
		delete(c.peers, p)
	}
}

// count is how many are held now.
func (c *counter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Kinds of refusal, the limit label of posture_anonymous_refused_total
// (and reasons of posture_gateway_rejected_total for front ends).
const (
	limitAnonConnsPerPeer   = "anonymous_connections_per_peer"
	limitAnonConns          = "anonymous_connections"
	limitAnonStreamsPerPeer = "anonymous_streams_per_peer"
	limitAnonStreams        = "anonymous_streams"
	limitThrottled          = "throttled" // failed enrollments (failThrottle)
)

// refusalNoun says what a kind of refusal refused, for the log.
func refusalNoun(kind string) string {
	switch kind {
	case limitAnonConnsPerPeer, limitAnonConns:
		return "connections without a client certificate"
	case limitAnonStreamsPerPeer, limitAnonStreams:
		return "calls without a client certificate"
	case limitThrottled:
		return "enrollment attempts"
	}
	return "requests"
}

// tally counts refusals per peer and kind between two summaries, so that
// a flood is logged as a line per peer and interval rather than a line per
// refusal. It names at most max peers an interval, and sums the rest.
type tally struct {
	mu     sync.Mutex
	max    int
	counts map[tallyKey]uint64
	others map[tallyKey]uint64 // refusals of peers beyond max, by listener and kind
}

type tallyKey struct {
	listener, kind string
	peer           peerAddr
}

// tallyCount is what a summary says of a kind of refusal: how many, and
// from which peer (none for the sum of the peers beyond the bound).
type tallyCount struct {
	tallyKey
	n     uint64
	named bool
}

func newTally(max int) *tally {
	return &tally{max: max, counts: map[tallyKey]uint64{}, others: map[tallyKey]uint64{}}
}

// add counts a refusal, and says whether it is the first of its kind from
// p on listener since p was last summarized with nothing to say: that one
// is logged in full.
func (t *tally) add(listener, kind string, p peerAddr) (first bool) {
	k := tallyKey{listener, kind, p}
	t.mu.Lock()
	defer t.mu.Unlock()
	n, known := t.counts[k]
	switch {
	case known:
		t.counts[k] = n + 1
		return false
	case len(t.counts) >= t.max:
		t.others[tallyKey{listener: listener, kind: kind}]++
		return false
	}
	t.counts[k] = 0 // the refusal logged in full is not summarized again
	return true
}

// take returns the refusals counted since the last take, and forgets the
// peers refused nothing since: their next refusal is logged in full.
func (t *tally) take() []tallyCount {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []tallyCount
	for k, n := range t.counts {
		if n == 0 {
			delete(t.counts, k)
			continue
		}
		out = append(out, tallyCount{tallyKey: k, n: n, named: true})
		t.counts[k] = 0
	}
	for k, n := range t.others {
		out = append(out, tallyCount{tallyKey: k, n: n})
		delete(t.others, k)
	}
	return out
}

// refused counts a refusal of kind from p, in metrics and in the log:
// the first from p in full (detail is what the client was told), the
// rest in the next summary.
func (c *Collector) refused(kind string, p peerAddr, detail string) {
	if kind == limitThrottled {
		c.stats.enrollRejected(kind)
	} else {
		c.stats.anonymousRefused(kind)
	}
	c.logRefusal(listenerTLS, kind, p, detail)
}

// Listeners, as the log names them.
const listenerTLS = "tls" // agents and gateways (gRPC)

func (c *Collector) logRefusal(listener, kind string, p peerAddr, detail string) {
	if c.refusals.add(listener, kind, p) {
		c.log.Warn("refused "+refusalNoun(kind), "listener", listener, "limit", kind, "peer", p.String(), "detail", detail,
			"note", fmt.Sprintf("further refusals from this address are summarized every %s", c.cfg.limits.refusalSummaryInterval))
	}
}

// summarizeRefusals logs what was refused since the last summary.
func (c *Collector) summarizeRefusals() {
	every := c.cfg.limits.refusalSummaryInterval.String()
	for _, r := range c.refusals.take() {
		who := r.peer.String()
		if !r.named {
			who = fmt.Sprintf("addresses beyond the %d named", c.cfg.limits.refusalPeers)
		}
		c.log.Warn("refused "+refusalNoun(r.kind), "listener", r.listener, "limit", r.kind, "peer", who, "count", r.n, "in_the_last", every)
	}
}

// anonymous says whether a TLS handshake presented no client certificate
// (one that does not verify fails the handshake).
func anonymous(info credentials.AuthInfo) bool {
	ti, ok := info.(credentials.TLSInfo)
	return ok && len(ti.State.VerifiedChains) == 0
}

// limitedCreds are the TLS listener's credentials: they count the
// connections of clients without a certificate per peer, and refuse those
// beyond the bounds.
type limitedCreds struct {
	credentials.TransportCredentials
	c *Collector
}

func (l *limitedCreds) Clone() credentials.TransportCredentials {
	return &limitedCreds{TransportCredentials: l.TransportCredentials.Clone(), c: l.c}
}

func (l *limitedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := l.TransportCredentials.ServerHandshake(raw)
	if err != nil || !anonymous(info) {
		return conn, info, err
	}
	c := l.c
	p, ok := peerOf(raw.RemoteAddr())
	if !ok {
		conn.Close()
		return nil, nil, fmt.Errorf("connection from %v: not an IP address", raw.RemoteAddr())
	}
	release, bound := c.anonConns.acquire(p)
	if bound == "" {
		return &releasingConn{Conn: conn, release: release}, info, nil
	}
	kind, msg := limitAnonConnsPerPeer, fmt.Sprintf("too many connections without a client certificate from %s (at most %d at once); close some, or retry in a minute", p, c.cfg.limits.anonConnsPerPeer)
	if bound == boundTotal {
		kind, msg = limitAnonConns, fmt.Sprintf("too many connections without a client certificate (at most %d at once from all addresses); retry in a minute", c.cfg.limits.anonConns)
	}
	c.refused(kind, p, msg)
	// The connection stays a moment to answer its calls with why, unless
	// too many refused ones do already.
	if c.refusedConns.hold(conn, msg, c.cfg.limits.refusedLinger) {
		return conn, info, nil
	}
	conn.Close()
	return nil, nil, fmt.Errorf("connection from %s refused: %s", p, msg)
}

// releasingConn releases its count when it closes.
type releasingConn struct {
	net.Conn
	release func()
}

func (c *releasingConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// refusedConnSet holds the connections refused for their peer's count that
// stay open a moment to answer their calls with why, by remote address.
type refusedConnSet struct {
	mu    sync.Mutex
	max   int
	conns map[string]string // remote address: why it was refused
}

// hold keeps conn for at most linger, answering its calls with msg, unless
// max are held already.
func (r *refusedConnSet) hold(conn net.Conn, msg string, linger time.Duration) bool {
	addr := conn.RemoteAddr().String()
	r.mu.Lock()
	if len(r.conns) >= r.max {
		r.mu.Unlock()
		return false
	}
	r.conns[addr] = msg
	r.mu.Unlock()
	time.AfterFunc(linger, func() {
		conn.Close()
		r.mu.Lock()
		delete(r.conns, addr)
		r.mu.Unlock()
	})
	return true
}

// refusal is why the connection from addr was refused, if it was.
func (r *refusedConnSet) refusal(addr string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	msg, ok := r.conns[addr]
	return msg, ok
}

// tapAnonymous sees every call on the TLS listener as its headers arrive,
// before gRPC reads its message (a unary call's handler runs only once the
// message is in, so an interceptor would never see a call whose message
// does not come), and counts the calls of clients without a certificate.
// A call beyond the limits is not refused here: gRPC does not release a
// call that a tap refuses until the deadline the client gave it, however
// far. It is marked instead, for refuseMarked to answer at once, and given
// refusedLinger for its message to arrive. The tap runs on the
// connection's reading goroutine: it must not block.
func (c *Collector) tapAnonymous(ctx context.Context, _ *tap.Info) (context.Context, error) {
	pr, ok := peer.FromContext(ctx)
	if !ok || !anonymous(pr.AuthInfo) {
		return ctx, nil
	}
	msg, refused := c.refusedConns.refusal(pr.Addr.String())
	if !refused {
		p, _ := peerOf(pr.Addr) // TLS connections are TCP's
		release, bound := c.anonStreams.acquire(p)
		if bound == "" {
			// The call's context ends when the call does, however it ends.
			context.AfterFunc(ctx, release)
			return ctx, nil
		}
		kind := limitAnonStreamsPerPeer
		msg = fmt.Sprintf("too many calls without a client certificate from %s (at most %d at once); retry in a few seconds", p, c.cfg.limits.anonStreamsPerPeer)
		if bound == boundTotal {
			kind, msg = limitAnonStreams, fmt.Sprintf("too many calls without a client certificate (at most %d at once from all addresses); retry in a few seconds", c.cfg.limits.anonStreams)
		}
		c.refused(kind, p, msg)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.limits.refusedLinger)
	return context.WithValue(ctx, refusedCallKey{}, refusedCall{msg: msg, cancel: cancel}), nil
}

// refusedCall marks the context of a call beyond the limits with why.
type refusedCall struct {
	msg    string
	cancel context.CancelFunc
}

type refusedCallKey struct{}

// markedRefusal is why a call was refused, if it was (nil otherwise); it
// ends the call's context.
func markedRefusal(ctx context.Context) error {
	r, ok := ctx.Value(refusedCallKey{}).(refusedCall)
	if !ok {
		return nil
	}
	r.cancel()
	return status.Error(codes.ResourceExhausted, r.msg)
}

// refuseMarkedUnary and refuseMarkedStream answer the calls tapAnonymous
// marked, before anything else looks at them.
func refuseMarkedUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := markedRefusal(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func refuseMarkedStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := markedRefusal(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

// LimitFront bounds the TLS connections that srv, a gateway front end
// (front names it in metrics: forward_auth), takes from clients that
// present no certificate: at most 64 per peer address and 1024 in all,
// counted until a request on the connection authenticates (a bearer
// secret). A connection beyond them is answered 429 and closed. Connections
// without TLS (a loopback listener in plaintext) are not counted. Call it
// before srv serves; it sets srv's ConnState, ConnContext and Handler.
func (c *Collector) LimitFront(front string, srv *http.Server) {
	f := &frontLimiter{c: c, front: front, counter: newCounter(c.cfg.limits.frontAnonConnsPerPeer, c.cfg.limits.frontAnonConns), conns: map[net.Conn]*frontConn{}}
	connState, connContext, next := srv.ConnState, srv.ConnContext, srv.Handler
	srv.ConnState = func(conn net.Conn, s http.ConnState) {
		f.connState(conn, s)
		if connState != nil {
			connState(conn, s)
		}
	}
	srv.ConnContext = func(ctx context.Context, conn net.Conn) context.Context {
		if connContext != nil {
			ctx = connContext(ctx, conn)
		}
		return context.WithValue(ctx, frontConnKey{}, conn)
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { f.serve(next, w, r) })
}

type frontConnKey struct{}

// frontLimiter counts a front end's connections without a certificate.
type frontLimiter struct {
	c       *Collector
	front   string
	counter *counter
	mu      sync.Mutex
	conns   map[net.Conn]*frontConn // TLS connections without a certificate
}

// frontConn is a connection without a client certificate: counted until
// it authenticates, or refused.
type frontConn struct {
	release func() // nil when refused
	refused string
}

func (f *frontLimiter) connState(conn net.Conn, s http.ConnState) {
	switch s {
	case http.StateActive:
		// The handshake is done by the time a request arrives.
		tc, ok := conn.(*tls.Conn)
		if !ok || len(tc.ConnectionState().PeerCertificates) > 0 {
			return
		}
		f.mu.Lock()
		_, seen := f.conns[conn]
		f.mu.Unlock()
		if seen {
			return
		}
		p, ok := peerOf(conn.RemoteAddr())
		if !ok {
			return
		}
		fc := &frontConn{}
		var bound string
		if fc.release, bound = f.counter.acquire(p); bound != "" {
			kind, msg := limitAnonConnsPerPeer, fmt.Sprintf("too many connections without a client certificate from %s (at most %d at once); present the gateway certificate (posture-collector gateway add), or close some", p, f.c.cfg.limits.frontAnonConnsPerPeer)
			if bound == boundTotal {
				kind, msg = limitAnonConns, fmt.Sprintf("too many connections without a client certificate (at most %d at once from all addresses); present the gateway certificate (posture-collector gateway add), or retry in a minute", f.c.cfg.limits.frontAnonConns)
			}
			fc.refused = msg
			f.c.stats.gatewayRejectedBy(f.front, kind)
			f.c.logRefusal(f.front, kind, p, msg)
			// Closed soon whatever it does: its requests are answered
			// with why until then.
			time.AfterFunc(f.c.cfg.limits.refusedLinger, func() { conn.Close() })
		}
		f.mu.Lock()
		f.conns[conn] = fc
		f.mu.Unlock()
	case http.StateClosed, http.StateHijacked:
		var release func()
		f.mu.Lock()
		if fc := f.conns[conn]; fc != nil {
			release, fc.release = fc.release, nil
		}
		delete(f.conns, conn)
		f.mu.Unlock()
		if release != nil {
			release()
		}
	}
}

// serve answers a request on a refused connection with why, and otherwise
// lets next answer: a connection whose request authenticates stops
// counting.
func (f *frontLimiter) serve(next http.Handler, w http.ResponseWriter, r *http.Request) {
	conn, _ := r.Context().Value(frontConnKey{}).(net.Conn)
	f.mu.Lock()
	fc := f.conns[conn]
	f.mu.Unlock()
	if fc == nil {
		next.ServeHTTP(w, r)
		return
	}
	if fc.refused != "" { // set before the map held fc, never changed
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", "60")
		http.Error(w, fc.refused, http.StatusTooManyRequests)
		return
	}
	aw := &authWatcher{ResponseWriter: w}
	next.ServeHTTP(aw, r)
	if !aw.unauthenticated {
		f.mu.Lock()
		release := fc.release
		fc.release = nil
		f.mu.Unlock()
		if release != nil {
			release()
		}
	}
}

// authWatcher notes whether an answer asks the client to authenticate
// (401 with WWW-Authenticate, RFC 9110 §11.6.1; a 401 about the device
// certificate has none).
type authWatcher struct {
	http.ResponseWriter
	unauthenticated bool
}

func (w *authWatcher) WriteHeader(code int) {
	if code == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") != "" {
		w.unauthenticated = true
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *authWatcher) Unwrap() http.ResponseWriter { return w.ResponseWriter }
