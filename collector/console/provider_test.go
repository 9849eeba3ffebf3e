package console_test

import (
	"context"
	"crypto/sha256"
	"html/template"
	"net"
	"net/http"
	"testing"

	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// A real OpenID provider for the tests: zitadel/oidc's provider package
// (op) with its in-memory storage, behind a login form of its own.

// person is a user of the test provider.
type person struct {
	id, username, password, email string
	groups                        []string
}

type people map[string]*person

func (p people) GetUserByID(id string) *storage.User {
	if u, ok := p[id]; ok {
		return &storage.User{ID: u.id, Username: u.username, Password: u.password, Email: u.email, EmailVerified: true, FirstName: u.username}
	}
	return nil
}

func (p people) GetUserByUsername(name string) *storage.User {
	for _, u := range p {
		if u.username == name {
			return p.GetUserByID(u.id)
		}
	}
	return nil
}

func (p people) ExampleClientID() string { return "" }

// groupStorage puts each person's email and groups in their ID token, as
// a company's provider configured with a groups claim does.
type groupStorage struct {
	*storage.Storage
	people people
}

func (s *groupStorage) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, info, req, scopes); err != nil {
		return err
	}
	if u, ok := s.people[req.GetSubject()]; ok {
		info.Email = u.email
		info.AppendClaims("groups", u.groups)
	}
	return nil
}

var loginForm = template.Must(template.New("login").Parse(`<!doctype html><title>Company sign-in</title>
<form method="post" action="/login/username"><input type="hidden" name="id" value="{{.}}">
<input id="username" name="username"> <input id="password" name="password" type="password"> <button id="submit" type="submit">Sign in</button></form>`))

// startProvider serves an OpenID provider on l (issuer http://l) that
// knows one client (clientID, secret, redirect) and the people given.
func startProvider(t *testing.T, l net.Listener, clientID, secret, redirect string, ps people) {
	t.Helper()
	issuer := "http://" + l.Addr().String()
	storage.RegisterClients(storage.WebClient(clientID, secret, redirect))
	st := &groupStorage{Storage: storage.NewStorage(ps), people: ps}
	provider, err := op.NewProvider(&op.Config{CryptoKey: sha256.Sum256([]byte("test provider")), CodeMethodS256: true, AuthMethodPost: true},
		st, op.StaticIssuer(issuer), op.WithAllowInsecure())
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/username", func(w http.ResponseWriter, r *http.Request) {
		loginForm.Execute(w, r.URL.Query().Get("authRequestID"))
	})
	mux.HandleFunc("POST /login/username", func(w http.ResponseWriter, r *http.Request) {
		id := r.FormValue("id")
		if err := st.CheckUsernamePassword(r.FormValue("username"), r.FormValue("password"), id); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		http.Redirect(w, r, op.AuthCallbackURL(provider)(r.Context(), id), http.StatusFound)
	})
	mux.Handle("/", provider)
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}
