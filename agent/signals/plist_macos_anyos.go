package signals

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"howett.net/plist"
)

// Property lists, as macOS tools print them, are decoded with
// howett.net/plist into typed structs: the XML of diskutil -plist, and the
// old-style ASCII (OpenStep) text that "defaults read" prints, whose values
// are untyped text.

// cfDataDescription matches a data value as "defaults read" prints it on
// recent macOS: CFData's description, "{length = 256, bytes = 0x62706c69
// ... 00000000 }", which is not property-list syntax. The agent reads no
// data values, so decodeDefaults replaces each with empty data (<>) rather
// than let one fail the whole domain.
var cfDataDescription = regexp.MustCompile(`\{length = \d+, bytes = 0x[0-9a-fA-F]*(?: \.\.\. [0-9a-fA-F]*)? ?\}`)

// decodeDefaults decodes "defaults read DOMAIN" output into v. The
// library reads empty text as an empty property list; defaults prints at
// least "{}" for a domain, so nothing at all is an error.
func decodeDefaults(out []byte, v any) error {
	if len(bytes.TrimSpace(out)) == 0 {
		return errors.New("defaults printed nothing")
	}
	if _, err := plist.Unmarshal(cfDataDescription.ReplaceAll(out, []byte("<>")), v); err != nil {
		return err
	}
	return nil
}

// errNoDomain is a preferences domain that does not exist.
var errNoDomain = errors.New("preferences domain does not exist")

// readDefaults runs "defaults read DOMAIN" and decodes the domain into v.
func (c *Collector) readDefaults(ctx context.Context, domain string, v any) error {
	args := []string{"read", domain}
	stdout, stderr, code, err := c.run(ctx, defaultsCmd, args...)
	if err != nil {
		return err
	}
	if code != 0 {
		if strings.Contains(string(stderr), "does not exist") {
			return fmt.Errorf("defaults read %s: %w", domain, errNoDomain)
		}
		return commandError(defaultsCmd, args, code, stderr, stdout)
	}
	if err := decodeDefaults(stdout, v); err != nil {
		return fmt.Errorf("parse defaults read %s: %w", domain, err)
	}
	return nil
}

// prefBool is a boolean preference read the way CFPreferences reads one:
// a boolean, a number ("defaults read" prints booleans as 1 and 0), or the
// text YES, NO, true or false. A value of another kind leaves it unset, as
// a missing one does.
type prefBool struct{ value, set bool }

// UnmarshalPlist implements plist.Unmarshaler.
func (b *prefBool) UnmarshalPlist(unmarshal func(any) error) error {
	var v any
	if err := unmarshal(&v); err != nil {
		return err
	}
	switch v := v.(type) {
	case bool:
		*b = prefBool{value: v, set: true}
	case uint64:
		*b = prefBool{value: v != 0, set: true}
	case int64:
		*b = prefBool{value: v != 0, set: true}
	case string:
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "yes", "true":
			*b = prefBool{value: true, set: true}
		case "no", "false":
			*b = prefBool{set: true}
		default:
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				*b = prefBool{value: n != 0, set: true}
			}
		}
	}
	return nil
}

// or returns b when it is set, else other: a managed preference wins over
// the user's own.
func (b prefBool) or(other prefBool) prefBool {
	if b.set {
		return b
	}
	return other
}
