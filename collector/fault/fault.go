// Package fault is how the collector's parts say why they refused
// something, without knowing the protocol that carries the answer: the
// API edge (collector/api) turns a Kind into a gRPC status code, in one
// place.
package fault

import (
	"errors"
	"fmt"
)

// Kind is what sort of refusal an error is.
type Kind int

// The kinds, each with the gRPC code the API answers it with.
const (
	// Internal: the collector failed (Internal).
	Internal Kind = iota
	// Invalid: the request is malformed (InvalidArgument).
	Invalid
	// Unauthenticated: the caller is not who it must be, or its
	// credential no longer counts (Unauthenticated).
	Unauthenticated
	// Denied: the caller may not do this (PermissionDenied).
	Denied
	// Precondition: not in the state it must be in (FailedPrecondition).
	Precondition
	// NotFound: what the request names does not exist (NotFound).
	NotFound
	// Exhausted: too much, for now (ResourceExhausted).
	Exhausted
	// Unavailable: try again later, perhaps elsewhere (Unavailable).
	Unavailable
	// Aborted: superseded by something newer (Aborted).
	Aborted
	// Timeout: the caller took too long (DeadlineExceeded).
	Timeout
)

// Error is a refusal: its kind, the reason it is counted under
// (token_used, bad_proof …; empty when it is not counted) and a message
// that tells the caller what to do next.
type Error struct {
	Kind   Kind
	Reason string
	Msg    string
	Err    error // what caused it, if anything
}

func (e *Error) Error() string { return e.Msg }

// Unwrap is the cause.
func (e *Error) Unwrap() error { return e.Err }

// New makes a refusal.
func New(kind Kind, reason, format string, args ...any) *Error {
	return &Error{Kind: kind, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// Wrap makes a refusal caused by err, whose message follows msg.
func Wrap(kind Kind, reason string, err error, msg string) *Error {
	return &Error{Kind: kind, Reason: reason, Msg: msg + ": " + err.Error(), Err: err}
}

// As finds the refusal in err.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
