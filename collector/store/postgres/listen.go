package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Wake receives, without blocking its sender, whenever a transaction that
// recorded events committed: in this process or in another collector
// sharing the database. It also receives once after the listening
// connection was lost and made again, since notifications sent meanwhile
// are lost. Pollers still poll: a notification is a hint, not a delivery.
func (s *Store) Wake() <-chan struct{} { return s.wake }

func (s *Store) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// startListening opens the connection that listens for notifications,
// before Open returns, so that nothing committed after Open goes
// unnoticed, and keeps it in a goroutine of its own until Close.
func (s *Store) startListening(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := listen(ctx, cfg)
	if err != nil {
		return err
	}
	lctx, cancel := context.WithCancel(context.Background())
	s.stopListen, s.listenDone = cancel, make(chan struct{})
	go s.listenLoop(lctx, cfg, conn)
	return nil
}

// listen connects outside the pool: the connection is held for as long as
// the store is open, waiting, and the pool's connections are for work.
func listen(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
	if err != nil {
		return nil, fmt.Errorf("connect to listen for changes: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		closeConn(conn)
		return nil, fmt.Errorf("listen for changes: %w", err)
	}
	return conn, nil
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// listenLoop waits for notifications on conn and signals Wake for each.
// When the connection fails it connects again, waiting longer after each
// failed attempt, and signals once it listens again.
func (s *Store) listenLoop(ctx context.Context, cfg *pgx.ConnConfig, conn *pgx.Conn) {
	defer close(s.listenDone)
	wait := s.listenBack.first
	for {
		up := time.Now()
		for {
			if _, err := conn.WaitForNotification(ctx); err != nil {
				break
			}
			s.signal()
		}
		closeConn(conn)
		if time.Since(up) > s.listenBack.most {
			wait = s.listenBack.first // it had been up a while: not a connection that keeps failing
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, s.listenBack.most)
			var err error
			if conn, err = listen(ctx, cfg); err == nil {
				break
			}
		}
		s.signal()
	}
}
