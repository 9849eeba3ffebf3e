package store

import (
	"context"
	"fmt"
	"time"
)

// Dumper writes out a whole database, one record at a time, for Copy.
// Every backend's store implements it.
type Dumper interface {
	// Dump calls fn with every record, from one consistent snapshot:
	// settings, tokens, pinned EKs, gateways, devices, reports in the
	// order they were stored, decisions, and last an EventMark. The
	// record and what it points to are fn's to keep. It stops at the
	// first error.
	Dump(ctx context.Context, fn func(Record) error) error
}

// Loader fills an empty database with what a Dumper wrote, for Copy.
// Every backend's store implements it.
type Loader interface {
	// Load stores every record next returns until it reports no more (ok
	// false), in one transaction: on an error nothing is stored. It
	// refuses, with ErrNotEmpty, a database that holds devices, tokens or
	// reports, and with ErrIdentityMismatch one that belongs to another
	// CA or trust domain (a setting recorded with another value). Reports
	// keep their order, and each device's head is its report with the
	// device's LastSeq. Event IDs given out after the load are above the
	// EventMark's.
	Load(ctx context.Context, next func() (Record, bool, error)) error
}

// Record is one row of a database as Dumper writes it and Loader reads
// it: exactly one of its fields is set. Events are not copied: they are
// the recent changes collectors apply, and a new database starts its own,
// with IDs above the EventMark.
type Record struct {
	Setting  *Setting
	Token    *Token
	PinnedEK *PinnedEK
	Gateway  *Gateway
	Device   *DeviceRecord
	Report   *Report // DeviceID, Seq, Digest, Nonce, Body, Proof, ReceivedAt
	Decision *DecisionRecord
	Events   *EventMark
	// Standing is a device's recorded standing, so that its graces go on
	// where they were.
	Standing *StandingRecord
	// DeviceUser, SSFClient and Receiver carry devices' users, Shared
	// Signals receivers and their streams (receivers with settings in the
	// database; their cursors start at the copy's empty outbox).
	// Messages waiting in the outbox are not copied: posture-collector
	// migrate refuses while any wait, unless told to drop them.
	DeviceUser *DeviceUser
	SSFClient  *SSFClient
	Receiver   *Receiver
	// Audit is a record of the audit log, dumped oldest first; the copy
	// gives it a new ID in the same order. The console's sessions and
	// sign-in links are not copied: people sign in again.
	Audit *AuditRecord
	// BrowserCert is a user's browser certificate (expired ones too:
	// the store lists only current ones), so that browsers keep reaching
	// apps through the copy.
	BrowserCert *BrowserCert
}

// StandingRecord is a device's standing, as Dump writes it.
type StandingRecord struct {
	DeviceID string
	Standing Standing
}

// Setting is one of the settings that the collectors sharing a database
// agreed on (ClaimIdentity's ca_fingerprint and trust_domain).
type Setting struct{ Key, Value string }

// PinnedEK is a pinned EK hash (PinEKs).
type PinnedEK struct {
	Hash        string // hex SHA-256 of the EK's PKIX DER
	Description string
	CreatedAt   time.Time
}

// DeviceRecord is a device with what the store keeps of it besides
// Device: its newest report stream and its measured-boot reading.
type DeviceRecord struct {
	Device
	StreamEpoch  uint64 // the newest stream's number (OpenReportStream)
	MeasuredBoot []byte // FleetRow.MeasuredBoot; nil for none
}

// DecisionRecord is a saved decision with the collector whose log holds
// it.
type DecisionRecord struct {
	Collector string
	Decision
}

// EventMark is where the dumped database's event IDs stood: LastEventID.
type EventMark struct {
	LastEventID uint64
}

// Copy copies the whole database src dumps into dst, which must be
// empty: what a collector moving from one backend to another runs. On an
// error dst is left as it was.
func Copy(ctx context.Context, src Dumper, dst Loader) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	records := make(chan Record, 256)
	dumped := make(chan error, 1)
	go func() {
		defer close(records)
		dumped <- src.Dump(ctx, func(r Record) error {
			select {
			case records <- r:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	next := func() (Record, bool, error) {
		r, ok := <-records
		if ok {
			return r, true, nil
		}
		// The dump ended: its error, if any, fails the load.
		if err := <-dumped; err != nil {
			dumped <- err
			return Record{}, false, err
		}
		dumped <- nil
		return Record{}, false, nil
	}
	loadErr := dst.Load(ctx, next)
	cancel() // stops a dump the load gave up on
	for range records {
	}
	dumpErr := <-dumped
	// A dump that failed failed the load too, through next, unless the
	// load had given up before.
	if loadErr != nil {
		return fmt.Errorf("copy database: %w", loadErr)
	}
	if dumpErr != nil {
		return fmt.Errorf("copy database: %w", dumpErr)
	}
	return nil
}
