// Package callerid carries the name of who asked for a decision from the
// front end that authenticated it to the decision log, which records it.
package callerid

import "context"

type key struct{}

// With returns ctx naming the caller ("gateway edge-1 (/check)").
func With(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, key{}, name)
}

// From returns the caller With named, or "" when none was.
func From(ctx context.Context) string {
	name, _ := ctx.Value(key{}).(string)
	return name
}
