package testtools

import (
	"context"
	"log/slog"
	"sync"
)

// LogRecorder is a slog.Handler that keeps every record logged through it,
// for tests that check what was logged.
type LogRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *LogRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *LogRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *LogRecorder) WithGroup(string) slog.Handler            { return l }

func (l *LogRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r.Clone())
	return nil
}

// Messages lists the messages logged at level.
func (l *LogRecorder) Messages(level slog.Level) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.records {
		if r.Level == level {
			out = append(out, r.Message)
		}
	}
	return out
}

// Has reports whether a record at level carries the attribute key=value.
func (l *LogRecorder) Has(level slog.Level, key, value string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.records {
		found := false
		r.Attrs(func(a slog.Attr) bool {
			found = a.Key == key && a.Value.String() == value
			return !found
		})
		if r.Level == level && found {
			return true
		}
	}
	return false
}

// Lines renders every record kept, with its attributes, as slog's text
// handler would.
func (l *LogRecorder) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.records {
		line := r.Level.String() + " " + r.Message
		r.Attrs(func(a slog.Attr) bool {
			line += " " + a.String()
			return true
		})
		out = append(out, line)
	}
	return out
}
