// Package collectors dials one of several collectors sharing a database:
// the agent and gateways connect to the first that answers, and move to
// another when theirs is lost, without a load balancer in between.
package collectors

import (
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// scheme names the resolver of a Dial's fixed list of addresses.
const scheme = "posture-collectors"

// Dial makes a client connection to the collectors at addrs (host:port
// each). gRPC's pick_first policy connects to the first address that
// answers, trying the next after a short wait (or at once when one
// refuses), and connects again the same way when the connection it uses
// is lost: calls then reach another collector. opts are added; they must
// set the transport credentials. The collector is recognised by its
// certificate, not its host name, so the addresses may be any names or
// IPs the collectors are reached at.
func Dial(addrs []string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no collector address")
	}
	if len(addrs) == 1 {
		return grpc.NewClient(addrs[0], opts...)
	}
	eps := make([]resolver.Endpoint, len(addrs))
	for i, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("collector address %q: %w", a, err)
		}
		eps[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}}
	}
	r := manual.NewBuilderWithScheme(scheme)
	r.InitialState(resolver.State{Endpoints: eps})
	return grpc.NewClient(scheme+":///collectors", append(opts, grpc.WithResolvers(r))...)
}
