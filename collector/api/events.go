package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/mail"
	"strings"
	"unicode"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/posture-project/posture/collector/ssf"
	"github.com/posture-project/posture/collector/store"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Transmitter is the Shared Signals transmitter as the admin service
// manages its streams.
type Transmitter interface {
	CreateStream(ctx context.Context, client store.SSFClient, req ssf.NewStream) (ssf.Stream, error)
	Streams(ctx context.Context, client string) ([]ssf.StreamState, error)
	DeleteStream(ctx context.Context, id, client string) error
}

// printable refuses empty text, text with control characters, and text
// longer than n bytes; what describes is its name in the message.
func printable(what, s string, n int) error {
	switch {
	case s == "":
		return status.Errorf(codes.InvalidArgument, "%s is required", what)
	case len(s) > n:
		return status.Errorf(codes.InvalidArgument, "%s is %d bytes long; at most %d", what, len(s), n)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return status.Errorf(codes.InvalidArgument, "%s holds a control character", what)
	}
	return nil
}

func (a *adminService) BindDeviceUser(ctx context.Context, req *posturev1.BindDeviceUserRequest) (*posturev1.BindDeviceUserResponse, error) {
	c := a.s
	u := req.GetUser()
	if err := printable("device_id", req.GetDeviceId(), maxDeviceID); err != nil {
		return nil, err
	}
	if u.GetEmail() == "" && (u.GetIssuer() == "" || u.GetSubject() == "") {
		return nil, status.Error(codes.InvalidArgument, "give the user's email, or the issuer and subject the identity provider knows them by (or both)")
	}
	if e := u.GetEmail(); e != "" {
		if addr, err := mail.ParseAddress(e); err != nil || addr.Address != e || addr.Name != "" {
			return nil, status.Errorf(codes.InvalidArgument, "email %q is not an address such as ada@example.com", e)
		}
	}
	for what, v := range map[string]string{"issuer": u.GetIssuer(), "subject": u.GetSubject()} {
		if v != "" {
			if err := printable(what, v, 512); err != nil {
				return nil, err
			}
		}
	}
	err := c.cfg.Store.BindDeviceUser(ctx, store.DeviceUser{DeviceID: req.GetDeviceId(), Email: u.GetEmail(), Issuer: u.GetIssuer(), Subject: u.GetSubject(), BoundAt: c.cfg.Now()})
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "device %s is not enrolled with this collector", req.GetDeviceId())
	case err != nil:
		return nil, status.Errorf(codes.Internal, "bind: %v", err)
	}
	return &posturev1.BindDeviceUserResponse{}, nil
}

func (a *adminService) UnbindDeviceUser(ctx context.Context, req *posturev1.UnbindDeviceUserRequest) (*posturev1.UnbindDeviceUserResponse, error) {
	err := a.s.cfg.Store.UnbindDeviceUser(ctx, req.GetDeviceId())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "device %s is bound to no user", req.GetDeviceId())
	case err != nil:
		return nil, status.Errorf(codes.Internal, "unbind: %v", err)
	}
	return &posturev1.UnbindDeviceUserResponse{}, nil
}

// transmitter is the SSF transmitter, or the status that says it is off.
func (s *Server) transmitter() (Transmitter, error) {
	if s.cfg.SSF == nil {
		return nil, status.Error(codes.FailedPrecondition, "the Shared Signals transmitter is off: start the collector with --ssf-issuer URL and --ssf-listen ADDR")
	}
	return s.cfg.SSF, nil
}

func (a *adminService) AddSSFReceiver(ctx context.Context, req *posturev1.AddSSFReceiverRequest) (*posturev1.AddSSFReceiverResponse, error) {
	c := a.s
	if err := printable("name", req.GetName(), 64); err != nil {
		return nil, err
	}
	if err := printable("audience", req.GetAudience(), 512); err != nil {
		return nil, err
	}
	if _, ok := c.cfg.Fleet.Policy().Level(req.GetLevel()); !ok {
		return nil, status.Errorf(codes.InvalidArgument, "level %q is not defined by the policy in force (defined: %v)", req.GetLevel(), c.cfg.Fleet.Policy().LevelNames())
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, status.Errorf(codes.Internal, "make a token: %v", err)
	}
	token := "pssf_" + base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(token))
	if err := c.cfg.Store.AddSSFClient(ctx, store.SSFClient{Name: req.GetName(), TokenHash: sum[:], Audience: req.GetAudience(), Level: req.GetLevel(), CreatedAt: c.cfg.Now()}); err != nil {
		return nil, status.Errorf(codes.AlreadyExists, "add receiver %s: %v (is the name taken? posture-collector ssf receiver list)", req.GetName(), err)
	}
	return &posturev1.AddSSFReceiverResponse{Token: token}, nil
}

func (a *adminService) ListSSFReceivers(ctx context.Context, _ *posturev1.ListSSFReceiversRequest) (*posturev1.ListSSFReceiversResponse, error) {
	cs, err := a.s.cfg.Store.SSFClients(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list: %v", err)
	}
	out := &posturev1.ListSSFReceiversResponse{}
	for _, c := range cs {
		out.Receivers = append(out.Receivers, &posturev1.SSFReceiver{Name: c.Name, Audience: c.Audience, Level: c.Level, CreatedAt: timestamppb.New(c.CreatedAt)})
	}
	return out, nil
}

func (a *adminService) RemoveSSFReceiver(ctx context.Context, req *posturev1.RemoveSSFReceiverRequest) (*posturev1.RemoveSSFReceiverResponse, error) {
	c := a.s
	err := c.cfg.Store.RemoveSSFClient(ctx, req.GetName())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "no Shared Signals receiver is named %s", req.GetName())
	case err != nil:
		return nil, status.Errorf(codes.Internal, "remove: %v", err)
	}
	out := &posturev1.RemoveSSFReceiverResponse{}
	if t := c.cfg.SSF; t != nil {
		streams, err := t.Streams(ctx, req.GetName())
		if err != nil {
			return nil, status.Errorf(codes.Internal, "read the receiver's streams: %v", err)
		}
		for _, s := range streams {
			if err := t.DeleteStream(ctx, s.ID, ""); err != nil && !errors.Is(err, ssf.ErrNoStream) {
				return nil, status.Errorf(codes.Internal, "delete stream %s: %v", s.ID, err)
			}
			out.StreamsDeleted++
		}
	}
	return out, nil
}

func (a *adminService) CreateSSFStream(ctx context.Context, req *posturev1.CreateSSFStreamRequest) (*posturev1.SSFStream, error) {
	c := a.s
	t, err := c.transmitter()
	if err != nil {
		return nil, err
	}
	cs, err := c.cfg.Store.SSFClients(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read the receivers: %v", err)
	}
	var client *store.SSFClient
	for i := range cs {
		if cs[i].Name == req.GetReceiver() {
			client = &cs[i]
		}
	}
	if client == nil {
		return nil, status.Errorf(codes.NotFound, "no Shared Signals receiver is named %q; add it first: posture-collector ssf receiver add NAME --audience AUD --level LEVEL", req.GetReceiver())
	}
	s, err := t.CreateStream(ctx, *client, ssf.NewStream{EndpointURL: req.GetEndpointUrl(), Authorization: req.GetAuthorizationHeader(),
		EventsRequested: req.GetEventsRequested(), Description: req.GetDescription()})
	if errors.Is(err, ssf.ErrInvalid) {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	} else if err != nil {
		return nil, status.Errorf(codes.Internal, "create the stream: %v", err)
	}
	return streamProto(ssf.StreamState{Stream: s}, nil), nil
}

func streamProto(st ssf.StreamState, delivery *posturev1.ReceiverStatus) *posturev1.SSFStream {
	s := st.Stream
	return &posturev1.SSFStream{StreamId: s.ID, Receiver: s.Client, Audience: s.Audience, EndpointUrl: s.EndpointURL,
		EventsDelivered: s.Delivered(), Status: s.Status, Description: s.Description, Delivery: delivery}
}

func (a *adminService) ListSSFStreams(ctx context.Context, _ *posturev1.ListSSFStreamsRequest) (*posturev1.ListSSFStreamsResponse, error) {
	c := a.s
	t, err := c.transmitter()
	if err != nil {
		return nil, err
	}
	states, err := t.Streams(ctx, "")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list: %v", err)
	}
	byID := map[string]*posturev1.ReceiverStatus{}
	if c.cfg.Receivers != nil {
		rs, err := c.cfg.Receivers(ctx)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "read the receivers: %v", err)
		}
		for _, r := range rs {
			byID[r.GetId()] = r
		}
	}
	out := &posturev1.ListSSFStreamsResponse{}
	for _, st := range states {
		out.Streams = append(out.Streams, streamProto(st, byID[ssf.ReceiverID(st.ID)]))
	}
	return out, nil
}

func (a *adminService) DeleteSSFStream(ctx context.Context, req *posturev1.DeleteSSFStreamRequest) (*posturev1.DeleteSSFStreamResponse, error) {
	t, err := a.s.transmitter()
	if err != nil {
		return nil, err
	}
	switch err := t.DeleteStream(ctx, req.GetStreamId(), ""); {
	case errors.Is(err, ssf.ErrNoStream):
		return nil, status.Errorf(codes.NotFound, "no stream %s", req.GetStreamId())
	case err != nil:
		return nil, status.Errorf(codes.Internal, "delete: %v", err)
	}
	return &posturev1.DeleteSSFStreamResponse{}, nil
}
