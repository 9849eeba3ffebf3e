package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/posture-project/posture/collector/store/sqlite"
)

// undelivered names the receivers with messages waiting in src's outbox.
// A copy does not carry the outbox (its messages are what the old
// database owed its receivers; a copy starts its own), so migrate refuses
// while any wait, unless told to discard them.
func undelivered(ctx context.Context, src *sqlite.Store) ([]string, error) {
	receivers, err := src.Receivers(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the receivers: %w", err)
	}
	var waiting []string
	for _, r := range receivers {
		msgs, err := src.OutboxAfter(ctx, r.Cursor, r.ID, 1)
		if err != nil {
			return nil, fmt.Errorf("read the outbox: %w", err)
		}
		if len(msgs) > 0 {
			waiting = append(waiting, fmt.Sprintf("%s (from %s, %s)", r.ID, msgs[0].At.UTC().Format("2006-01-02 15:04:05Z"), msgs[0].Kind))
		}
	}
	return waiting, nil
}

// errUndelivered is migrate's refusal while messages wait.
func errUndelivered(waiting []string) error {
	return fmt.Errorf("nothing was copied: messages wait for delivery to %s, and a copy does not carry them; "+
		"start the collector on its data directory until `posture-collector stats` shows none pending, stop it and migrate again "+
		"(for a receiver that is gone for good, pass --discard-undelivered to drop what it was owed)", strings.Join(waiting, ", "))
}
