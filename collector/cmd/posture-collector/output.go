package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"google.golang.org/protobuf/proto"

	"github.com/posture-project/posture/internal/inert"
	"github.com/posture-project/posture/internal/jsonview"
)

// What the admin commands print holds text from devices (hostnames,
// reasons, OS names) and from requests (device IDs and levels gateways
// asked about). It reaches the admin's terminal only in its inert form:
// tables through table, lines through inert.Fprintf, JSON through
// printJSON.

// printJSON prints m in the stable JSON form of internal/jsonview: every
// field, enum values as the tables' words, numbers as numbers, and the
// characters protojson leaves raw (C1 controls, bidirectional overrides …)
// escaped.
func printJSON(out io.Writer, m proto.Message) error {
	b, err := jsonview.Marshal(m)
	if err != nil {
		return err
	}
	_, err = out.Write(b)
	return err
}

// table prints aligned columns. Every cell is shown inert, so a tab or a
// newline in a hostname cannot break the columns any more than an escape
// sequence can reach the terminal, whichever column is added next.
type table struct {
	tw *tabwriter.Writer
}

// newTable starts a table with its header.
func newTable(out io.Writer, header ...any) *table {
	t := &table{tw: tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)}
	t.row(header...)
	return t
}

// row adds a row: strings as they are shown inert, anything else (scores,
// booleans) as fmt prints it.
func (t *table) row(cells ...any) {
	for i, c := range cells {
		if i > 0 {
			io.WriteString(t.tw, "\t")
		}
		s, ok := c.(string)
		if !ok {
			s = fmt.Sprint(c)
		}
		io.WriteString(t.tw, inert.String(s))
	}
	io.WriteString(t.tw, "\n")
}

// flush prints the table.
func (t *table) flush() error {
	return t.tw.Flush()
}
