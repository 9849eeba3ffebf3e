package api

import (
	"strings"
	"testing"

	posturev1 "github.com/posture-project/posture/proto/posture/v1"
)

// TestEveryAdminActionAudited holds the audit log to the authorization
// table: every method of the admin services that changes something has an
// action name, and no read has one.
func TestEveryAdminActionAudited(t *testing.T) {
	var n int
	for method := range methodRoles {
		svc, name, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
		if svc != "posture.v1.AdminService" && svc != "posture.v1.ConsoleService" {
			if _, ok := audited[method]; ok {
				t.Errorf("%s is audited but is no admin action", method)
			}
			continue
		}
		read := strings.HasPrefix(name, "List") || strings.HasPrefix(name, "Get") || strings.HasPrefix(name, "Diff")
		_, ok := audited[method]
		switch {
		case read && ok:
			t.Errorf("%s reads, yet is audited", method)
		case !read && !ok:
			t.Errorf("%s changes something but has no action name in audited: add one, as the command line names it", method)
		case ok:
			n++
		}
	}
	if n != len(audited) {
		t.Errorf("%d audited actions are in the authorization table, audited names %d", n, len(audited))
	}
}

// TestAuditArgs checks what the audit log keeps of each new action's
// request, and that secrets stay out of it.
func TestAuditArgs(t *testing.T) {
	tests := []struct {
		name         string
		req          any
		target, want string
		secret       string
	}{
		{"bind", &posturev1.BindDeviceUserRequest{DeviceId: "dev-1", User: &posturev1.DeviceUser{Email: "ann@example.com", Issuer: "https://idp", Subject: "u1"}},
			"dev-1", "user ann@example.com (iss https://idp, sub u1)", ""},
		{"unbind", &posturev1.UnbindDeviceUserRequest{DeviceId: "dev-1"}, "dev-1", "", ""},
		{"receiver add", &posturev1.AddSSFReceiverRequest{Name: "okta", Audience: "https://okta", Level: "trusted"}, "okta", "audience https://okta, level trusted", ""},
		{"receiver remove", &posturev1.RemoveSSFReceiverRequest{Name: "okta"}, "okta", "", ""},
		{"stream create", &posturev1.CreateSSFStreamRequest{Receiver: "okta", EndpointUrl: "https://okta/push", AuthorizationHeader: "Bearer s3cret-token", Description: "prod"},
			"okta", "endpoint https://okta/push, description: prod", "s3cret-token"},
		{"stream delete", &posturev1.DeleteSSFStreamRequest{StreamId: "st-9"}, "st-9", "", ""},
		{"token", &posturev1.CreateEnrollmentTokenRequest{Uses: 3}, "", "ttl 1h0m0s, uses 3", ""},
		{"token revoke", &posturev1.RevokeEnrollmentTokenRequest{Id: "5c0d9e2a41b7f003"}, "5c0d9e2a41b7f003", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, detail := auditArgs(tt.req)
			if target != tt.target || detail != tt.want {
				t.Errorf("auditArgs = %q, %q; want %q, %q", target, detail, tt.target, tt.want)
			}
			if tt.secret != "" && strings.Contains(target+detail, tt.secret) {
				t.Errorf("the audit log would keep the secret %q", tt.secret)
			}
		})
	}
}
