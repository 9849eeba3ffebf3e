// Package cliflag holds what the command lines of posture-collector and
// posture-agent share about flags: durations that accept days, flags that
// take one of a few words, and configuration files whose keys are flags.
package cliflag

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// ParseDuration reads a duration as a person writes it: whole days ("90d",
// "1d") or a Go duration ("36h", "90s", "1h30m").
func ParseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("%q: want whole days (90d) or a duration (36h, 90s)", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want whole days (90d) or a duration (36h, 90s)", s)
	}
	return d, nil
}

// FormatDuration writes d as ParseDuration reads it, in whole days when it
// is a positive number of them.
func FormatDuration(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// duration is a pflag.Value for a time.Duration that accepts days.
type duration struct{ d *time.Duration }

func (v duration) String() string {
	if v.d == nil {
		return ""
	}
	return FormatDuration(*v.d)
}

func (v duration) Set(s string) error {
	d, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

func (duration) Type() string { return "duration" }

// Duration defines a duration flag that accepts days as well as Go
// durations.
func Duration(fs *pflag.FlagSet, name string, def time.Duration, usage string) *time.Duration {
	d := def
	fs.Var(duration{&d}, name, usage)
	return &d
}

// choice is a pflag.Value that takes one of a few words.
type choice struct {
	v     *string
	words []string
}

func (c choice) String() string { return *c.v }

func (c choice) Set(s string) error {
	if !slices.Contains(c.words, s) {
		return fmt.Errorf("want %s", strings.Join(c.words, " or "))
	}
	*c.v = s
	return nil
}

func (c choice) Type() string { return strings.Join(c.words, "|") }

// Choice defines a flag that takes one of words, the first by default. Any
// other value is refused as the flags are parsed, before anything is done.
func Choice(fs *pflag.FlagSet, name, shorthand, usage string, words ...string) *string {
	v := words[0]
	fs.VarP(choice{&v, words}, name, shorthand, usage+": "+strings.Join(words, " or "))
	return &v
}

// Output defines -o/--output, one of formats, the first by default.
func Output(fs *pflag.FlagSet, formats ...string) *string {
	return Choice(fs, "output", "o", "output format", formats...)
}

// Func defines a flag whose value set checks and keeps; typ names its
// values in the help (a string, a list).
func Func(fs *pflag.FlagSet, name, typ, def, usage string, set func(string) error) {
	fs.Var(&funcValue{s: def, set: set, typ: typ}, name, usage)
}

type funcValue struct {
	s   string
	typ string
	set func(string) error
}

func (f *funcValue) String() string { return f.s }
func (f *funcValue) Type() string   { return f.typ }
func (f *funcValue) Set(s string) error {
	if err := f.set(s); err != nil {
		return err
	}
	f.s = s
	return nil
}

// Repeated defines a flag that may be given several times, each value
// checked by check and kept in order. In a configuration file its key
// takes a list (see File). Its values are returned.
func Repeated(fs *pflag.FlagSet, name, typ, usage string, check func(string) error) *[]string {
	v := &repeated{typ: typ, check: check}
	fs.Var(v, name, usage)
	return &v.values
}

// repeated is a Repeated flag's value; as a pflag.SliceValue a
// configuration file's list reaches it item by item.
type repeated struct {
	values []string
	typ    string
	check  func(string) error
}

func (r *repeated) String() string { return strings.Join(r.values, " ") }
func (r *repeated) Type() string   { return r.typ }
func (r *repeated) Set(s string) error {
	return r.Append(s)
}

func (r *repeated) Append(s string) error {
	if err := r.check(s); err != nil {
		return err
	}
	r.values = append(r.values, s)
	return nil
}

func (r *repeated) Replace(vals []string) error {
	for _, s := range vals {
		if err := r.check(s); err != nil {
			return err
		}
	}
	r.values = append([]string(nil), vals...)
	return nil
}

func (r *repeated) GetSlice() []string { return append([]string(nil), r.values...) }
