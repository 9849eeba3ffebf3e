// Package flagdoc keeps docs/configuration.md true to the command lines
// of posture-collector and posture-agent: it renders the reference of
// every command's flags from the cobra definitions (the section make
// generate writes and make generate-check compares), and checks the
// hand-written tables of the configuration keys against the flags: every
// key has a row, every row names a flag, and a default written there is
// the flag's default.
package flagdoc

import (
	"bufio"
	"bytes"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/posture-project/posture/internal/cliflag"
)

// Reference renders, as Markdown, the flags of every visible command of
// root that takes flags: for each, a table of flag, type, default and the
// flag's help (which names the environment variable that sets a
// default, where one does).
func Reference(root *cobra.Command) string {
	var b strings.Builder
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		var flags []*pflag.Flag
		c.NonInheritedFlags().VisitAll(func(f *pflag.Flag) {
			if f.Name != "help" && !f.Hidden && !(c != root && c.Root().PersistentFlags().Lookup(f.Name) == f) {
				flags = append(flags, f)
			}
		})
		if len(flags) > 0 {
			fmt.Fprintf(&b, "\n#### `%s`\n\n| flag | type | default | meaning |\n| --- | --- | --- | --- |\n", c.CommandPath())
			for _, f := range flags {
				name := "`--" + f.Name + "`"
				if f.Shorthand != "" {
					name = "`-" + f.Shorthand + "`, " + name
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", name, cell(f.Value.Type()), defaultText(f), cell(f.Usage))
			}
		}
		cmds := c.Commands()
		sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
		for _, sub := range cmds {
			walk(sub)
		}
	}
	walk(root)
	return b.String()
}

// AllFlags gathers the flags of every command of root into one set, the
// first definition of a name winning: the flags a configuration file's
// keys may set, whichever command reads them.
func AllFlags(root *cobra.Command) *pflag.FlagSet {
	fs := pflag.NewFlagSet(root.Name(), pflag.ContinueOnError)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.NonInheritedFlags().VisitAll(func(f *pflag.Flag) {
			if fs.Lookup(f.Name) == nil {
				fs.AddFlag(f)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return fs
}

// defaultText is a flag's default as the reference shows it.
func defaultText(f *pflag.Flag) string {
	if _, ok := f.Value.(pflag.SliceValue); ok && (f.DefValue == "" || f.DefValue == "[]") {
		return "none"
	}
	switch f.DefValue {
	case "":
		return "none"
	case "false":
		if f.Value.Type() == "bool" {
			return "off"
		}
	}
	return "`" + f.DefValue + "`"
}

// cell makes text safe inside a Markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "<", "&lt;")
	s = strings.ReplaceAll(s, "*", `\*`)
	return strings.ReplaceAll(s, "\n", " ")
}

// Begin and End are the markers around a generated section named name.
func Begin(name string) string {
	return "<!-- BEGIN generated " + name + ": make generate writes it from the flags; do not edit -->"
}

// End closes the section Begin opens.
func End(name string) string { return "<!-- END generated " + name + " -->" }

// Splice replaces the section named name in doc with body, and also
// returns what stood there.
func Splice(doc []byte, name, body string) (out []byte, old string, err error) {
	begin, end := []byte(Begin(name)), []byte(End(name))
	i := bytes.Index(doc, begin)
	j := bytes.Index(doc, end)
	if i < 0 || j < i {
		return nil, "", fmt.Errorf("no section %q: the document needs the lines\n%s\n%s", name, begin, end)
	}
	start := i + len(begin)
	out = append(out, doc[:start]...)
	out = append(out, '\n')
	out = append(out, strings.TrimSpace(body)...)
	out = append(out, '\n', '\n')
	out = append(out, doc[j:]...)
	return out, string(doc[start:j]), nil
}

// Table reads the first Markdown table after the heading line (as
// "## Collector") in doc: its rows below the header, each a list of
// cells.
func Table(doc []byte, heading string) ([][]string, error) {
	sc := bufio.NewScanner(bytes.NewReader(doc))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	found, inTable, header := false, false, 0
	var rows [][]string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !found {
			found = line == heading
			continue
		}
		if strings.HasPrefix(line, "|") {
			inTable = true
			if header < 2 { // the header and its --- line
				header++
				continue
			}
			rows = append(rows, splitRow(line))
			continue
		}
		if inTable {
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("no heading %q", heading)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("no table under %q", heading)
	}
	return rows, nil
}

// splitRow splits a table row into cells, keeping \| inside a cell.
func splitRow(line string) []string {
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	var cells []string
	var cur strings.Builder
	for i := 0; i < len(line); i++ {
		if line[i] == '\\' && i+1 < len(line) && line[i+1] == '|' {
			cur.WriteByte('|')
			i++
			continue
		}
		if line[i] == '|' {
			cells = append(cells, strings.TrimSpace(cur.String()))
			cur.Reset()
			continue
		}
		cur.WriteByte(line[i])
	}
	return append(cells, strings.TrimSpace(cur.String()))
}

// CheckTable compares a hand-written table of flags (first cell: the
// flags, as `--name`, comma-separated; second: their defaults) with fs.
// Every flag in keys must have a row; every flag a row names must be a
// flag of fs; and a default given as a literal (`10s`) must be the
// flag's, durations compared as durations ("off" and "none" stand for an
// empty or false default). It returns what is wrong, one line each.
func CheckTable(rows [][]string, fs *pflag.FlagSet, keys []string) []string {
	var problems []string
	named := map[string]bool{}
	for _, r := range rows {
		names := flagNames(r[0])
		if len(names) == 0 {
			problems = append(problems, fmt.Sprintf("row %q names no flag (`--name`)", r[0]))
			continue
		}
		defs := []string{}
		if len(r) > 1 {
			defs = strings.Split(r[1], ", ")
		}
		for i, n := range names {
			named[n] = true
			f := fs.Lookup(n)
			if f == nil {
				problems = append(problems, fmt.Sprintf("--%s is documented but is not a flag", n))
				continue
			}
			if len(defs) != len(names) {
				if i == 0 && len(names) == 1 {
					problems = append(problems, checkDefault(f, r[1])...)
				}
				continue
			}
			problems = append(problems, checkDefault(f, defs[i])...)
		}
	}
	for _, k := range keys {
		if !named[k] {
			f := fs.Lookup(k)
			usage := ""
			if f != nil {
				usage = f.Usage
			}
			problems = append(problems, fmt.Sprintf("--%s has no row (its help: %s)", k, usage))
		}
	}
	return problems
}

// flagNames are the `--name` flags a cell names.
func flagNames(c string) []string {
	var out []string
	for _, part := range strings.Split(c, "`") {
		if n, ok := strings.CutPrefix(part, "--"); ok && n != "" && !strings.ContainsAny(n, " =") {
			out = append(out, n)
		}
	}
	return out
}

// checkDefault compares the documented default doc with f's.
func checkDefault(f *pflag.Flag, doc string) []string {
	doc = strings.TrimSpace(doc)
	def := f.DefValue
	if _, ok := f.Value.(pflag.SliceValue); ok && def == "[]" {
		def = ""
	}
	switch {
	case doc == "off" || doc == "none":
		if def != "" && def != "false" && def != "0" {
			return []string{fmt.Sprintf("--%s: documented default %q, but it is %q", f.Name, doc, def)}
		}
		return nil
	case !strings.HasPrefix(doc, "`"):
		return nil // words ("the host name"): the reference shows the value
	}
	lit, _, _ := strings.Cut(strings.TrimPrefix(doc, "`"), "`")
	if lit == def {
		return nil
	}
	if a, err := cliflag.ParseDuration(lit); err == nil {
		if b, err := cliflag.ParseDuration(def); err == nil && a == b {
			return nil
		}
	}
	return []string{fmt.Sprintf("--%s: documented default `%s`, but it is %q", f.Name, lit, def)}
}
