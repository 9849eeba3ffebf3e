package collector

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/posture-project/posture/collector/store"
	"github.com/posture-project/posture/collector/store/postgres"
	"github.com/posture-project/posture/collector/store/sqlite"
)

// openSQLite opens the SQLite database of a collector on its own.
func openSQLite(path string) (store.Store, error) { return sqlite.Open(path) }

// openDatabase opens a database several collectors share.
func openDatabase(ctx context.Context, dsn string) (store.Store, error) {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		st, err := postgres.Open(ctx, dsn)
		if err != nil {
			return nil, fmt.Errorf("--database %s: %w", redact(dsn), err)
		}
		return st, nil
	}
	return nil, fmt.Errorf("--database %s: give a postgres:// URL, or leave --database out for SQLite in the data directory", redact(dsn))
}

// redact hides a password in a database URL.
func redact(dsn string) string {
	at := strings.LastIndex(dsn, "@")
	scheme := strings.Index(dsn, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return dsn
	}
	user := dsn[scheme+3 : at]
	if i := strings.Index(user, ":"); i >= 0 {
		user = user[:i] + ":…"
	}
	return dsn[:scheme+3] + user + dsn[at:]
}

// heartbeatInterval is how often a collector records itself among the
// replicas sharing its database.
const heartbeatInterval = 10 * time.Second

// heartbeat records this collector in the database: its name, address,
// version, and the newest event it applied. A collector that could not
// read the changes of the others for half the event retention stops: the
// oldest of those it has not read may be gone, and only a fresh start
// (its service manager starts it again) loads the fleet as it stands.
func (c *Collector) heartbeat(ctx context.Context) {
	if since := time.Since(c.feed.LastRead()); since > c.cfg.EventRetention/2 {
		err := fmt.Errorf("could not read the changes of the collectors sharing the database for %v, half of the events' retention (%v): stopping, to start afresh", since.Round(time.Second), c.cfg.EventRetention)
		c.log.Error("collector stopping", "err", err)
		select {
		case c.failed <- err:
		default:
		}
		return
	}
	addr, _ := c.advertise()
	name := c.cfg.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	r := store.Replica{ID: c.replica.id, Name: name, Advertise: addr, Version: Version, StartedAt: c.started, SeenAt: time.Now(), Applied: c.feed.Applied()}
	if err := c.store.Heartbeat(ctx, r); err != nil && ctx.Err() == nil {
		c.log.Warn("record this collector among the replicas", "err", err)
	}
}

// advertise is the address this collector is reached at, written into
// tokens.
func (c *Collector) advertise() (string, error) {
	if c.cfg.Advertise != "" {
		return c.cfg.Advertise, nil
	}
	host, port, err := net.SplitHostPort(c.Addr())
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return "", fmt.Errorf("the collector listens on %s, which agents cannot dial; restart it with --advertise HOST:%s", c.Addr(), port)
	}
	return c.Addr(), nil
}

// replicaStale is how long a replica may go without a heartbeat and still
// count as running (for tokens and event pruning).
const replicaStale = 6 * heartbeatInterval

// advertised lists the addresses written into tokens: this collector's
// first, then those of the other collectors sharing the database that were
// seen recently, so that an agent can move to another when one is lost.
func (c *Collector) advertised(ctx context.Context) ([]string, error) {
	own, err := c.advertise()
	if err != nil {
		return nil, err
	}
	addrs := []string{own}
	reps, err := c.store.Replicas(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range reps {
		if r.ID == c.replica.id || r.Advertise == "" || time.Since(r.SeenAt) > replicaStale || slices.Contains(addrs, r.Advertise) {
			continue
		}
		addrs = append(addrs, r.Advertise)
	}
	return addrs, nil
}

// eventPruneInterval is how often old events are deleted.
const eventPruneInterval = time.Hour

// pruneEvents deletes the events older than the retention, except those a
// collector sharing the database, seen running within the retention, has
// not applied yet.
func (c *Collector) pruneEvents(ctx context.Context) {
	cutoff := time.Now().Add(-c.cfg.EventRetention)
	below := c.feed.Applied()
	reps, err := c.store.Replicas(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error("delete events past their retention", "err", err)
		}
		return
	}
	for _, r := range reps {
		if r.ID != c.replica.id && r.SeenAt.After(cutoff) {
			below = min(below, r.Applied)
		}
	}
	n, err := c.store.PruneEvents(ctx, cutoff, below)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		c.log.Error("delete events past their retention", "err", err)
	case n > 0:
		c.log.Info("deleted events past their retention", "deleted", n, "retention", c.cfg.EventRetention.String())
	}
}

// decisionSaveInterval is how often the decision log is saved.
const decisionSaveInterval = time.Second

// saveDecisions saves the decision log's records that are due.
func (c *Collector) saveDecisions(ctx context.Context, all bool) {
	if err := c.decisions.Save(ctx, c.store, c.replica.id, all); err != nil {
		c.log.Error("save decisions", "err", err)
	}
	// New decisions may have been announced through the outbox.
	c.outbox.Wake()
}
