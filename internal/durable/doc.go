// Package durable writes the files both sides keep across restarts (keys,
// certificates, the agent's chain head and spool, the collector's ID) so
// that a crash or power loss leaves each one whole, old or new, and so
// that files holding secrets are open to their owner only: mode 0600/0700
// on Unix, an access list for SYSTEM and Administrators on Windows.
package durable
