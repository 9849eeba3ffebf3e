package signals

// osState holds what the Linux measurements keep between cycles: the
// system bus connection and the source of the nftables ruleset.
type osState struct {
	bus systemBus
	// nftables reads the kernel's nftables ruleset; tests replace it with
	// rulesets they build or read from a network namespace of their own.
	nftables func() ([]nftChain, error)
}

func newOSState(opts Options, root string) osState {
	return osState{bus: systemBus{addr: busAddress(opts, root)}, nftables: readNftables}
}
