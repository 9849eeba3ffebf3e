//go:build !linux

package signals

// osState holds what a platform's measurements keep between cycles;
// only Linux has any (osstate_linux.go).
type osState struct{}

func newOSState(Options, string) osState { return osState{} }
