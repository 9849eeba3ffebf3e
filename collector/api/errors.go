package api

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/posture-project/posture/collector/fault"
	"github.com/posture-project/posture/collector/gateways"
	"github.com/posture-project/posture/collector/watch"
)

// codeOf is the gRPC code of each kind of refusal: the one place where
// the collector's refusals meet the protocol.
var codeOf = map[fault.Kind]codes.Code{
	fault.Internal:        codes.Internal,
	fault.Invalid:         codes.InvalidArgument,
	fault.Unauthenticated: codes.Unauthenticated,
	fault.Denied:          codes.PermissionDenied,
	fault.Precondition:    codes.FailedPrecondition,
	fault.NotFound:        codes.NotFound,
	fault.Exhausted:       codes.ResourceExhausted,
	fault.Unavailable:     codes.Unavailable,
	fault.Aborted:         codes.Aborted,
	fault.Timeout:         codes.DeadlineExceeded,
}

// statusOf turns what a part of the collector returned into what the
// caller gets: a refusal's code and message, a revoked gateway as
// Unauthenticated, a watcher dropped as ResourceExhausted, a context's end
// as its status, and anything else (already a status, or an I/O error of
// the stream) as it is.
func statusOf(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if f, ok := fault.As(err); ok {
		return status.Error(codeOf[f.Kind], f.Msg)
	}
	switch {
	case errors.Is(err, gateways.ErrRevoked):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.Is(err, watch.ErrDropped):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return err
}
