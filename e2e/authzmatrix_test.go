package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/posture-project/posture/collector/gatewayfront"
	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/sqlite"
	"github.com/posture-project/posture/internal/pki"
	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// Callers of the authorization matrix. Each is a TLS client of the
// collector's listener.
const (
	callerAnonymous      = "no certificate"
	callerDevice         = "device"
	callerRevokedDevice  = "revoked device"
	callerPendingDevice  = "pending device"
	callerGateway        = "gateway"
	callerRevokedGateway = "revoked gateway"
	callerAdmin          = "admin"
)

// matrixCallers lists them in the order the matrix is printed.
var matrixCallers = []string{callerAnonymous, callerDevice, callerRevokedDevice, callerPendingDevice, callerGateway, callerRevokedGateway, callerAdmin}

// allowedCallers is the expected authorization table: for every method
// the collector's TLS listener serves, who may call it. It is written out
// here, apart from collector/api's methodRoles, so that a rule changed
// there, or a method added without one, fails this test. A pending device
// is a device to authorization (its standing limits what it is told, not
// what it may ask); a revoked device and a revoked gateway may call
// nothing (see refusedCallers).
var allowedCallers = map[string][]string{
	"/grpc.health.v1.Health/Check":                                   {callerAnonymous, callerDevice, callerPendingDevice, callerGateway, callerAdmin},
	"/grpc.health.v1.Health/Watch":                                   {callerAnonymous, callerDevice, callerPendingDevice, callerGateway, callerAdmin},
	"/grpc.health.v1.Health/List":                                    {callerAnonymous, callerDevice, callerPendingDevice, callerGateway, callerAdmin},
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo":      {callerGateway, callerAdmin},
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": {callerGateway, callerAdmin},
	"/envoy.service.auth.v3.Authorization/Check":                     {callerGateway},
	"/posture.v1.EnrollmentService/Enroll":                           {callerAnonymous},
	"/posture.v1.ReportService/StreamReports":                        {callerDevice, callerPendingDevice},
	"/posture.v1.ReportService/RenewCertificate":                     {callerDevice, callerPendingDevice},
	"/posture.v1.ReportService/IssueBrowserCertificate":              {callerDevice, callerPendingDevice},
	"/posture.v1.GatewayService/CheckAccess":                         {callerGateway, callerAdmin},
	"/posture.v1.GatewayService/GetDevicePosture":                    {callerGateway, callerAdmin},
	"/posture.v1.GatewayService/WatchPosture":                        {callerGateway, callerAdmin},
	"/posture.v1.AdminService/CreateEnrollmentToken":                 {callerAdmin},
	"/posture.v1.AdminService/ListDevices":                           {callerAdmin},
	"/posture.v1.AdminService/GetDevice":                             {callerAdmin},
	"/posture.v1.AdminService/RevokeDevice":                          {callerAdmin},
	"/posture.v1.AdminService/IssueGatewayCertificate":               {callerAdmin},
	"/posture.v1.AdminService/ApproveDevice":                         {callerAdmin},
	"/posture.v1.AdminService/PreregisterEK":                         {callerAdmin},
	"/posture.v1.AdminService/ReloadPolicy":                          {callerAdmin},
	"/posture.v1.AdminService/DiffPolicy":                            {callerAdmin},
	"/posture.v1.AdminService/ListDecisions":                         {callerAdmin},
	"/posture.v1.AdminService/GetStats":                              {callerAdmin},
	"/posture.v1.AdminService/ListGateways":                          {callerAdmin},
	"/posture.v1.AdminService/RevokeGateway":                         {callerAdmin},
	"/posture.v1.AdminService/ListReplicas":                          {callerAdmin},
	"/posture.v1.ConsoleService/CreateSignInLink":                    {callerAdmin},
	"/posture.v1.ConsoleService/ListAudit":                           {callerAdmin},
	"/posture.v1.AdminService/BindDeviceUser":                        {callerAdmin},
	"/posture.v1.AdminService/UnbindDeviceUser":                      {callerAdmin},
	"/posture.v1.AdminService/AddSSFReceiver":                        {callerAdmin},
	"/posture.v1.AdminService/ListSSFReceivers":                      {callerAdmin},
	"/posture.v1.AdminService/RemoveSSFReceiver":                     {callerAdmin},
	"/posture.v1.AdminService/CreateSSFStream":                       {callerAdmin},
	"/posture.v1.AdminService/ListSSFStreams":                        {callerAdmin},
	"/posture.v1.AdminService/DeleteSSFStream":                       {callerAdmin},
	"/posture.v1.AdminService/ListEnrollmentTokens":                  {callerAdmin},
	"/posture.v1.AdminService/RevokeEnrollmentToken":                 {callerAdmin},
}

// refusedCallers are refused whatever they call, with this code: a
// revoked device is known and denied, a revoked gateway's certificate no
// longer authenticates.
var refusedCallers = map[string]codes.Code{
	callerRevokedDevice:  codes.PermissionDenied,
	callerRevokedGateway: codes.Unauthenticated,
}

// TestAuthorizationMatrix calls every method of every service on the
// collector's TLS listener (as the gRPC server lists them, the Envoy
// ext_authz server included, as posture-collector run registers it) as
// every kind of caller, over real TLS, and checks each outcome against
// allowedCallers: an allowed call is answered by its service (which may
// refuse the empty request, but not with PermissionDenied or
// Unauthenticated), a denied one is refused with PermissionDenied before
// it is read, and a refused caller gets its code everywhere. A method the
// table does not list fails the test: a new RPC needs a rule.
func TestAuthorizationMatrix(t *testing.T) {
	e := startCollector(t)
	ctx := context.Background()
	deviceDir, _ := e.enroll()
	revokedDir, revokedID := e.enroll()
	pendingDir, pendingID := e.enroll()
	if _, err := e.admin.RevokeDevice(ctx, &posturev1.RevokeDeviceRequest{DeviceId: revokedID, Reason: "matrix: stolen"}); err != nil {
		t.Fatal(err)
	}
	gateway := e.gatewayCert("matrix-gateway")
	revokedGateway := e.gatewayCert("matrix-revoked")
	if _, err := e.admin.RevokeGateway(ctx, &posturev1.RevokeGatewayRequest{Name: "matrix-revoked", Reason: "matrix: retired"}); err != nil {
		t.Fatal(err)
	}
	// A device pending approval, set in the store while the collector is
	// stopped, as a TPM enrollment whose EK is neither verified nor pinned
	// leaves it.
	e.stop()
	st, err := sqlite.Open(filepath.Join(e.dataDir, "posture.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetDeviceState(ctx, pendingID, store.StatePending, "matrix: awaiting approval", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	var services map[string]grpc.ServiceInfo
	e.startWith(func() {
		x, err := gatewayfront.NewExtAuthz(gatewayfront.ExtAuthzConfig{Decider: e.c, TrustDomain: trustDomain, Roots: e.c.Roots()})
		if err != nil {
			t.Fatal(err)
		}
		e.c.RegisterTLS(x.Register)
		e.c.RegisterTLS(func(s *grpc.Server) { services = s.GetServiceInfo() })
	})
	if d, err := e.device(pendingID); err != nil || d.GetDevice().GetState() != posturev1.DeviceState_DEVICE_STATE_PENDING {
		t.Fatalf("pending device: %v, %v", d.GetDevice().GetState(), err)
	}

	// An admin certificate from the collector's CA: no command issues one,
	// but the collector accepts it.
	ca, err := pki.LoadOrCreateCA(e.dataDir, trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	adminKey, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	adminLeaf, err := ca.IssueClient(adminKey.Public(), pki.SPIFFEID(trustDomain, pki.RoleAdmin, "matrix-admin"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	admin := tls.Certificate{Certificate: [][]byte{adminLeaf.Raw}, PrivateKey: adminKey, Leaf: adminLeaf}

	device, _ := deviceCreds(t, deviceDir)
	revoked, _ := deviceCreds(t, revokedDir)
	pending, _ := deviceCreds(t, pendingDir)
	conns := map[string]*grpc.ClientConn{
		callerAnonymous:      e.dial(nil),
		callerDevice:         e.dial(&device),
		callerRevokedDevice:  e.dial(&revoked),
		callerPendingDevice:  e.dial(&pending),
		callerGateway:        e.dial(&gateway),
		callerRevokedGateway: e.dial(&revokedGateway),
		callerAdmin:          e.dial(&admin),
	}

	var methods []string
	streaming := map[string]bool{}
	for svc, info := range services {
		for _, m := range info.Methods {
			name := "/" + svc + "/" + m.Name
			methods = append(methods, name)
			streaming[name] = m.IsClientStream || m.IsServerStream
		}
	}
	sort.Strings(methods)
	for _, m := range methods {
		if _, ok := allowedCallers[m]; !ok {
			t.Errorf("%s is served on the TLS listener but has no row in the expected authorization table: add one here, and its rule to methodRoles in collector/api/auth.go", m)
		}
	}
	for m := range allowedCallers {
		if !slices.Contains(methods, m) {
			t.Errorf("the expected authorization table lists %s, which the TLS listener does not serve", m)
		}
	}

	var summary strings.Builder
	fmt.Fprintf(&summary, "%-64s", "method")
	for _, c := range matrixCallers {
		fmt.Fprintf(&summary, " | %-18s", c)
	}
	summary.WriteString("\n")
	for _, m := range methods {
		fmt.Fprintf(&summary, "%-64s", m)
		for _, c := range matrixCallers {
			err := callMethod(conns[c], m, streaming[m])
			got := status.Code(err)
			var ok bool
			var want string
			switch code, refused := refusedCallers[c]; {
			case refused:
				ok, want = got == code, code.String()
			case slices.Contains(allowedCallers[m], c):
				ok, want = got != codes.PermissionDenied && got != codes.Unauthenticated, "allowed"
			default:
				ok, want = got == codes.PermissionDenied, codes.PermissionDenied.String()
			}
			if !ok {
				t.Errorf("%s as %s: %v (%v), want %s", m, c, got, err, want)
			}
			cell := got.String()
			if got != codes.PermissionDenied && got != codes.Unauthenticated {
				cell = "+" + cell // let in, and answered with this code
			}
			fmt.Fprintf(&summary, " | %-18s", cell)
		}
		summary.WriteString("\n")
	}
	t.Logf("authorization matrix (what each caller got; + marks a call let in and answered by its service):\n%s", summary.String())

	// Every admin action the matrix called as the admin is in the audit
	// log once, refused or not (the empty requests are mostly refused),
	// and no one else's call is: one road for every action.
	var actions int
	for _, m := range methods {
		if isAdminAction(m) {
			actions++
		}
	}
	audit, err := posturev1.NewConsoleServiceClient(conns[callerAdmin]).ListAudit(ctx, &posturev1.ListAuditRequest{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var byAdmin []string
	for _, r := range audit.GetRecords() {
		switch r.GetActor() {
		case "admin matrix-admin":
			byAdmin = append(byAdmin, r.GetAction())
		case "local admin":
		default:
			t.Errorf("audit record by %q (%s): only admins' actions are recorded", r.GetActor(), r.GetAction())
		}
	}
	if len(byAdmin) != actions || actions < 14 {
		t.Errorf("the audit log holds %d actions by the matrix's admin (%v), want one for each of the %d admin actions called", len(byAdmin), byAdmin, actions)
	}
}

// isAdminAction says whether a method of the admin services changes
// something (reads are not audited).
func isAdminAction(method string) bool {
	svc, name, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	if svc != "posture.v1.AdminService" && svc != "posture.v1.ConsoleService" {
		return false
	}
	for _, read := range []string{"List", "Get", "Diff"} {
		if strings.HasPrefix(name, read) {
			return false
		}
	}
	return true
}

// callMethod calls a method with an empty request and returns the status
// it ended with; a stream that answers with a message was let in.
func callMethod(conn *grpc.ClientConn, method string, stream bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !stream {
		return conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
	}
	s, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, method)
	if err != nil {
		return err
	}
	// A refused stream may end before the request is sent; its status
	// comes with RecvMsg either way.
	_ = s.SendMsg(&emptypb.Empty{})
	_ = s.CloseSend()
	return s.RecvMsg(&emptypb.Empty{})
}
