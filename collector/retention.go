package collector

import (
	"context"
	"time"
)

const (
	// retentionInterval is how often the collector deletes reports older
	// than the retention; the first pass runs a minute after start.
	retentionInterval = time.Hour
	retentionDelay    = time.Minute
	// retentionChunk bounds the reports one writer operation looks at, and
	// with it how long reports being stored wait behind a pass.
	retentionChunk = 512
	// retentionPause is the writer's breathing room between chunks.
	retentionPause = 10 * time.Millisecond
)

// PruneReports runs one retention pass now: it deletes the stored reports
// received longer ago than the configured retention, except each device's
// latest, and returns how many it deleted. With no retention configured it
// deletes nothing. A running collector also does this on its own every
// hour.
func (c *Collector) PruneReports(ctx context.Context) (int, error) {
	if c.cfg.ReportRetention <= 0 {
		return 0, nil
	}
	cutoff := c.cfg.Now().Add(-c.cfg.ReportRetention)
	var (
		from  int64
		total int
	)
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return total, ctx.Err()
			case <-time.After(retentionPause):
			}
		}
		p, err := c.store.PruneReports(ctx, cutoff, from, retentionChunk)
		if err != nil {
			return total, err
		}
		total += p.Pruned
		c.metrics.pruned.Add(float64(p.Pruned))
		if p.Done {
			return total, nil
		}
		from = p.Next
	}
}

// retentionPass runs PruneReports and logs what it did.
func (c *Collector) retentionPass(ctx context.Context) {
	start := time.Now()
	n, err := c.PruneReports(ctx)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		c.log.Error("delete reports past the retention", "err", err, "deleted", n)
	case n > 0:
		c.log.Info("deleted reports past the retention", "deleted", n, "retention", c.cfg.ReportRetention.String(),
			"took", time.Since(start).Round(time.Millisecond).String())
	}
}
