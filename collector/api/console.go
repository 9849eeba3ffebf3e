package api

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Roles of the people signed in to the console. An admin may do what the
// admin socket allows; a viewer may only read (the methodRoles table says
// which methods).
const (
	RoleAdmin  = pki.RoleAdmin
	RoleViewer = roleViewer
)

// roleViewer is held only by people signed in to the console.
const roleViewer = "viewer"

// How an admin reached the collector, as the audit log says.
const (
	viaSocket  = "admin socket"
	viaConsole = "console"
)

// Actor is a person signed in to the console.
type Actor struct {
	Name string // as the identity provider names them, or a sign-in link's name
	Role string // RoleAdmin or RoleViewer
	From string // the browser's address
}

// unaryMethod is one unary method of a service, as gRPC registers it.
type unaryMethod struct {
	srv     any
	handler grpc.MethodHandler
}

// registerUnary records the unary methods of a service for InProcess.
func (s *Server) registerUnary(desc *grpc.ServiceDesc, srv any) {
	for _, m := range desc.Methods {
		s.unary["/"+desc.ServiceName+"/"+m.MethodName] = unaryMethod{srv: srv, handler: m.Handler}
	}
}

// InProcess is a connection to this collector's unary services for a
// person signed in to the console: posturev1.NewAdminServiceClient(
// s.InProcess(actor)) calls the AdminService methods the admin socket
// serves, authorized by the actor's role from the same table and recorded
// in the audit log by the same code as every call over the network, so
// the console cannot do what the command line could not, nor differently.
// Messages are copied in and out, as a connection would.
func (s *Server) InProcess(a Actor) grpc.ClientConnInterface {
	role := a.Role
	if role != RoleAdmin {
		role = roleViewer // nothing else is a person's role
	}
	return inProcess{s: s, who: caller{role: role, name: a.Name, via: viaConsole, from: a.From}}
}

type inProcess struct {
	s   *Server
	who caller
}

func (c inProcess) Invoke(ctx context.Context, method string, args, reply any, _ ...grpc.CallOption) error {
	m, ok := c.s.unary[method]
	in, okIn := args.(proto.Message)
	out, okOut := reply.(proto.Message)
	if !ok || !okIn || !okOut {
		return status.Errorf(codes.Unimplemented, "%s is not served in process", method)
	}
	dec := func(v any) error {
		proto.Merge(v.(proto.Message), in)
		return nil
	}
	intercept := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return c.s.call(ctx, c.who, info.FullMethod, req, h)
	}
	resp, err := m.handler(m.srv, ctx, dec, intercept)
	if err != nil {
		return err
	}
	proto.Reset(out)
	proto.Merge(out, resp.(proto.Message))
	return nil
}

func (c inProcess) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Error(codes.Unimplemented, "streams are not served in process")
}

// audited names the admin actions the audit log records, as the command
// line names them. Reads are not recorded.
var audited = map[string]string{
	posturev1.AdminService_CreateEnrollmentToken_FullMethodName:   "token create",
	posturev1.AdminService_RevokeDevice_FullMethodName:            "devices revoke",
	posturev1.AdminService_ApproveDevice_FullMethodName:           "devices approve",
	posturev1.AdminService_PreregisterEK_FullMethodName:           "devices preregister",
	posturev1.AdminService_IssueGatewayCertificate_FullMethodName: "gateway add",
	posturev1.AdminService_RevokeGateway_FullMethodName:           "gateway revoke",
	posturev1.AdminService_ReloadPolicy_FullMethodName:            "policy reload",
	posturev1.AdminService_BindDeviceUser_FullMethodName:          "devices bind",
	posturev1.AdminService_UnbindDeviceUser_FullMethodName:        "devices unbind",
	posturev1.AdminService_AddSSFReceiver_FullMethodName:          "ssf receiver add",
	posturev1.AdminService_RemoveSSFReceiver_FullMethodName:       "ssf receiver remove",
	posturev1.AdminService_CreateSSFStream_FullMethodName:         "ssf stream create",
	posturev1.AdminService_DeleteSSFStream_FullMethodName:         "ssf stream delete",
	posturev1.AdminService_RevokeEnrollmentToken_FullMethodName:   "token revoke",
	posturev1.ConsoleService_CreateSignInLink_FullMethodName:      "console login",
}

// audit records an admin action by who in the audit log, with how it
// ended (err). Actions refused to devices, gateways and clients without
// a certificate are counted (stats), not recorded: they are not admins,
// and recording them would let any client write to the database.
func (s *Server) audit(ctx context.Context, who caller, method string, req any, err error) {
	action, ok := audited[method]
	if !ok || (who.role != RoleAdmin && who.role != roleViewer) {
		return
	}
	rec := store.AuditRecord{At: s.cfg.Now(), Actor: actorName(who), Role: who.role, Via: who.via, From: who.from, Action: action}
	rec.Target, rec.Detail = auditArgs(req)
	if err != nil {
		rec.Outcome = status.Convert(err).Message()
	}
	s.Audit(ctx, rec)
}

// Audit stores an audit record: an admin action, or a console sign-in or
// sign-out. The action was done (or refused) already, so the record is
// written even when the caller has gone; a record that cannot be written
// is logged as an error.
func (s *Server) Audit(ctx context.Context, rec store.AuditRecord) {
	if _, err := s.cfg.Store.AppendAudit(context.WithoutCancel(ctx), rec); err != nil {
		s.cfg.Logger.Error("audit record not stored", "action", rec.Action, "actor", rec.Actor, "target", rec.Target, "outcome", rec.Outcome, "err", err)
	}
}

// actorName names who in the audit log.
func actorName(who caller) string {
	switch {
	case who.via == viaSocket:
		return "local admin"
	case who.via == viaConsole:
		return who.name
	}
	return who.role + " " + who.name
}

// auditArgs is what the audit log keeps of an action's request: its
// target and the arguments worth keeping. Secrets are not kept.
func auditArgs(req any) (target, detail string) {
	switch r := req.(type) {
	case *posturev1.CreateEnrollmentTokenRequest:
		ttl := "1h0m0s"
		if r.GetTtl() != nil {
			ttl = r.GetTtl().AsDuration().String()
		}
		detail = fmt.Sprintf("ttl %s, uses %d", ttl, max(r.GetUses(), 1))
		if r.GetDescription() != "" {
			detail += ", description: " + r.GetDescription()
		}
		return "", detail
	case *posturev1.RevokeEnrollmentTokenRequest:
		return r.GetId(), ""
	case *posturev1.RevokeDeviceRequest:
		return r.GetDeviceId(), "reason: " + r.GetReason()
	case *posturev1.ApproveDeviceRequest:
		return r.GetDeviceId(), ""
	case *posturev1.PreregisterEKRequest:
		detail = "EK SHA-256 " + strings.Join(r.GetEkSha256(), ",")
		if r.GetDescription() != "" {
			detail += ", description: " + r.GetDescription()
		}
		return "", detail
	case *posturev1.IssueGatewayCertificateRequest:
		return r.GetName(), ""
	case *posturev1.RevokeGatewayRequest:
		target = r.GetName()
		if r.GetSerial() != "" {
			target = "serial " + r.GetSerial()
		}
		return target, "reason: " + r.GetReason()
	case *posturev1.CreateSignInLinkRequest:
		return r.GetName(), "ttl " + signInLinkTTL(r).String()
	case *posturev1.BindDeviceUserRequest:
		u := r.GetUser()
		detail = "user " + u.GetEmail()
		if u.GetIssuer() != "" || u.GetSubject() != "" {
			detail += fmt.Sprintf(" (iss %s, sub %s)", u.GetIssuer(), u.GetSubject())
		}
		return r.GetDeviceId(), detail
	case *posturev1.UnbindDeviceUserRequest:
		return r.GetDeviceId(), ""
	case *posturev1.AddSSFReceiverRequest:
		return r.GetName(), fmt.Sprintf("audience %s, level %s", r.GetAudience(), r.GetLevel())
	case *posturev1.RemoveSSFReceiverRequest:
		return r.GetName(), ""
	case *posturev1.CreateSSFStreamRequest:
		// The authorization header is the receiver's secret: not kept.
		detail = "endpoint " + r.GetEndpointUrl()
		if len(r.GetEventsRequested()) > 0 {
			detail += ", events " + strings.Join(r.GetEventsRequested(), ",")
		}
		if r.GetDescription() != "" {
			detail += ", description: " + r.GetDescription()
		}
		return r.GetReceiver(), detail
	case *posturev1.DeleteSSFStreamRequest:
		return r.GetStreamId(), ""
	}
	return "", ""
}

// Bounds of sign-in links (CreateSignInLink).
const (
	defaultSignInLinkTTL = 15 * time.Minute
	minSignInLinkTTL     = time.Minute
	maxSignInLinkTTL     = 24 * time.Hour
	maxActorName         = 256
)

func signInLinkTTL(r *posturev1.CreateSignInLinkRequest) time.Duration {
	if r.GetTtl() == nil {
		return defaultSignInLinkTTL
	}
	return r.GetTtl().AsDuration()
}

type consoleService struct {
	posturev1.UnimplementedConsoleServiceServer
	s *Server
}

func (c *consoleService) CreateSignInLink(ctx context.Context, req *posturev1.CreateSignInLinkRequest) (*posturev1.CreateSignInLinkResponse, error) {
	ttl := signInLinkTTL(req)
	name := req.GetName()
	if name == "" {
		name = "first admin"
	}
	switch {
	case c.s.cfg.SignInLinks == nil:
		return nil, status.Error(codes.FailedPrecondition, "the console is not running: start the collector with --console-listen ADDR")
	case ttl < minSignInLinkTTL || ttl > maxSignInLinkTTL:
		return nil, status.Errorf(codes.InvalidArgument, "ttl %s: give %s to %s", ttl, minSignInLinkTTL, maxSignInLinkTTL)
	case len(name) > maxActorName:
		return nil, status.Errorf(codes.InvalidArgument, "name is %d bytes long; at most %d", len(name), maxActorName)
	}
	url, expires, err := c.s.cfg.SignInLinks(ctx, name, ttl, actorName(callerFrom(ctx)))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "make a sign-in link: %v", err)
	}
	c.s.cfg.Logger.Info("console sign-in link made", "name", name, "expires_at", expires, "by", describe(callerFrom(ctx)))
	return &posturev1.CreateSignInLinkResponse{Url: url, ExpiresAt: timestamppb.New(expires)}, nil
}

func (c *consoleService) ListAudit(ctx context.Context, req *posturev1.ListAuditRequest) (*posturev1.ListAuditResponse, error) {
	limit := int(req.GetLimit())
	if limit > store.MaxAuditListed {
		return nil, status.Errorf(codes.InvalidArgument, "limit %d is above %d; page with before, or narrow with since, actor or target", limit, store.MaxAuditListed)
	}
	q := store.AuditQuery{Before: req.GetBefore(), Actor: req.GetActor(), Target: req.GetTarget(), Limit: limit}
	if req.GetSince() != nil {
		q.Since = req.GetSince().AsTime()
	}
	recs, err := c.s.cfg.Store.Audit(ctx, q)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list audit records: %v", err)
	}
	out := &posturev1.ListAuditResponse{Records: make([]*posturev1.AuditRecord, 0, len(recs))}
	for _, r := range recs {
		out.Records = append(out.Records, &posturev1.AuditRecord{Id: r.ID, At: timestamppb.New(r.At), Actor: r.Actor, Role: r.Role, Via: r.Via,
			From: r.From, Action: r.Action, Target: r.Target, Detail: r.Detail, Outcome: r.Outcome})
	}
	return out, nil
}
