// Package api is the collector's gRPC face: the enrollment, report,
// gateway and admin services as thin adapters over the parts that do the
// work, authorization of every call by role, and the one place where a
// refusal becomes a gRPC status.
package api

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/posture-project/posture/collector/decisions"
	"github.com/posture-project/posture/collector/enroll"
	"github.com/posture-project/posture/collector/fleet"
	"github.com/posture-project/posture/collector/gateways"
	"github.com/posture-project/posture/collector/ingest"
	"github.com/posture-project/posture/collector/policy"
	"github.com/posture-project/posture/collector/stats"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/watch"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Applier applies what the store committed (feed.Feed).
type Applier interface {
	Apply(ev store.Event, pre *fleet.Assessed)
}

// Config is what the services work with.
type Config struct {
	Store     store.Store
	Fleet     *fleet.Fleet
	Hub       *watch.Hub
	Feed      Applier
	Gateways  *gateways.Revocations
	Decisions *decisions.Log
	Stats     *stats.Stats
	Enroller  *enroll.Enroller
	Ingester  *ingest.Ingester
	CA        *pki.CA
	// BrowserCertTTL is the lifetime of browser certificates; zero means
	// DefaultBrowserCertTTL.
	BrowserCertTTL time.Duration
	// TrustDomain names the SPIFFE trust domain of every certificate.
	TrustDomain string
	// Advertise lists the addresses agents dial, written into tokens.
	Advertise func(ctx context.Context) ([]string, error)
	// ReloadPolicy reads the policy file again and puts it in force.
	ReloadPolicy func() (*policy.Policy, error)
	// Decided, when set, counts an answered decision by level (the
	// policy's, or "undefined") and result.
	Decided func(level string, allowed bool)
	// SignInLinks, when set, makes one-time console sign-in links for a
	// session named name, valid for ttl, asked for by by (the console,
	// when it runs): it returns the link and when it expires.
	SignInLinks func(ctx context.Context, name string, ttl time.Duration, by string) (url string, expires time.Time, err error)
	// Replica is this collector's replica ID; Replicas lists them all.
	Replica string
	// StandingLease says whether this collector records device standings.
	StandingLease func() bool
	// Receivers lists the outbox's receivers and how delivery to each
	// stands.
	Receivers func(ctx context.Context) ([]*posturev1.ReceiverStatus, error)
	// SSF is the Shared Signals transmitter; nil when it is off.
	SSF    Transmitter
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server holds the services.
type Server struct {
	cfg     Config
	gateway *gatewayService
	admin   *adminService
	console *consoleService
	health  healthpb.HealthServer
	// unary holds every unary method by its full name, for InProcess.
	unary map[string]unaryMethod
}

// New makes the services. health answers the health service.
func New(cfg Config, health healthpb.HealthServer) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Decided == nil {
		cfg.Decided = func(string, bool) {}
	}
	s := &Server{cfg: cfg, health: health, unary: map[string]unaryMethod{}}
	s.gateway = &gatewayService{s: s}
	s.admin = &adminService{s: s}
	s.console = &consoleService{s: s}
	s.registerUnary(&posturev1.AdminService_ServiceDesc, s.admin)
	s.registerUnary(&posturev1.ConsoleService_ServiceDesc, s.console)
	s.registerUnary(&posturev1.GatewayService_ServiceDesc, s.gateway)
	return s
}

// Register adds every service to srv.
func (s *Server) Register(srv *grpc.Server) {
	posturev1.RegisterEnrollmentServiceServer(srv, &enrollService{s: s})
	posturev1.RegisterReportServiceServer(srv, &reportService{s: s})
	posturev1.RegisterGatewayServiceServer(srv, s.gateway)
	posturev1.RegisterAdminServiceServer(srv, s.admin)
	posturev1.RegisterConsoleServiceServer(srv, s.console)
	healthpb.RegisterHealthServer(srv, s.health)
	reflection.Register(srv)
}

// ServerOptions are the interceptors that authorize every call.
func (s *Server) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(s.unaryAuth), grpc.ChainStreamInterceptor(s.streamAuth)}
}

// CheckAccess answers the same decision as the gateway RPC, in-process, for
// the collector's own gateway front ends (HTTP forward-auth, Envoy
// ext_authz). Errors are gRPC statuses.
func (s *Server) CheckAccess(ctx context.Context, req *posturev1.CheckAccessRequest) (*posturev1.CheckAccessResponse, error) {
	return s.gateway.CheckAccess(ctx, req)
}

// GatewayRevoked says why the gateway certificate with serial was revoked,
// or returns nil while it stands.
func (s *Server) GatewayRevoked(serial string) error { return s.cfg.Gateways.Check(serial) }

// Roots is a pool holding the collector CA.
func (s *Server) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.cfg.CA.Cert)
	return p
}
