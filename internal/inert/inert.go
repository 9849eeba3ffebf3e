// Package inert shows text that came from devices and requests without
// letting it act on the reader's terminal. A hostname, a report's reason,
// a device ID a gateway asked about or a rejection message may carry
// escape sequences (clear the screen, move the cursor, set the window
// title, write the clipboard with OSC 52) or bidirectional overrides that
// reorder what is shown; printed as they are, an enrolled device could
// repaint itself as healthy on an admin's screen.
//
// # The rule
//
// These are shown escaped, in Go's escape syntax, so that a reader sees
// which character was sent:
//
//   - C0 controls U+0000–U+001F and DEL U+007F: \a \b \t \n \v \f \r for
//     those that have a short form, \x1b and the like for the rest. Tab,
//     carriage return and newline are escaped too: inside a field they
//     would break a table's columns or overwrite a line.
//   - C1 controls U+0080–U+009F, as \u009b: terminals that honour 8-bit
//     controls read U+009B as CSI and U+009D as OSC.
//   - Format characters (Unicode category Cf), as \u202e or \U000e0041:
//     the bidirectional embeddings, overrides and isolates (U+202A–U+202E,
//     U+2066–U+2069), the marks U+200E, U+200F and U+061C, and the
//     invisible ones that hide or split text (U+200B, U+2060, U+FEFF,
//     U+00AD, the tag characters U+E0000–U+E007F …). Every Bidi_Control
//     character is in Cf, and so are the new invisible characters Unicode
//     adds, so the rule is the category rather than a list.
//   - The line and paragraph separators U+2028 and U+2029, which some
//     viewers break lines on.
//   - Bytes that are not UTF-8, as \xff.
//
// One exception keeps emoji and scripts whole: ZERO WIDTH JOINER U+200D
// and ZERO WIDTH NON-JOINER U+200C pass unchanged between two visible
// characters beyond ASCII (letters, marks, numbers, punctuation, symbols),
// which is where emoji sequences (👩‍💻) and scripts such as Devanagari and
// Persian use them. Anywhere else (at either end, next to ASCII, a space
// or another invisible character) they only hide a difference between two
// names that look alike, and are escaped. Subdivision flags, the only
// emoji made with tag characters, show their tags escaped: tag characters
// can carry a whole invisible text.
//
// Everything else passes unchanged: accents, CJK, emoji. A field that
// holds nothing to escape is shown exactly as it is, backslashes included,
// so that Windows paths stay readable. A field that holds something to
// escape is shown wholly escaped, its backslashes doubled too, so that it
// reads back exactly (an OSC sequence ended by ESC \ shows as \x1b\\).
// What stays ambiguous is a field that spells an escape in plain ASCII
// ("\x1b" typed as four characters): it looks like an escaped field but
// is shown as it is; JSON output gives the exact string.
//
// # Where it applies
//
// String is the form of one field (a table cell, a value on a line); Text
// is the form of a message of several lines (it keeps newlines); Fprintf
// formats a line whose arguments are fields. JSON escapes the same
// characters in JSON text as \uXXXX, which Go's encoders leave raw
// (encoding/json escapes only C0, U+2028 and U+2029; protojson only C0),
// so the text still decodes to the same strings.
//
// slog's TextHandler quotes every string holding a character that is not
// printable, with strconv.Quote, in messages, keys, group names, values
// and errors alike, except DEL, which it writes raw; its JSONHandler
// escapes only C0, U+2028 and U+2029. NewTextHandler and NewJSONHandler
// give both binaries' logs the rule above.
package inert

import (
	"fmt"
	"io"
	"log/slog"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

const (
	zwnj = '\u200c'
	zwj  = '\u200d'
	// none stands for the neighbour of a character at either end of the
	// text or next to a byte that is not UTF-8.
	none = -1
)

// escaped reports whether r, between prev and next, is shown escaped.
func escaped(prev, r, next rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r < 0xa0:
		return true
	case r == '\u2028', r == '\u2029':
		return true
	case r == zwj, r == zwnj:
		return !joins(prev) || !joins(next)
	}
	return r >= 0xa0 && unicode.Is(unicode.Cf, r)
}

// joins reports whether a joiner next to r belongs where it is: r is a
// visible character beyond ASCII.
func joins(r rune) bool {
	return r > 0x7f && unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S)
}

// plain reports whether s is printable ASCII, which every rule passes.
// Tab, newline and carriage return count as printable when whitespace is
// set (JSON's whitespace between tokens).
func plain[T string | []byte](s T, whitespace bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c < 0x7f || whitespace && (c == '\t' || c == '\n' || c == '\r') {
			continue
		}
		return false
	}
	return true
}

// walk calls f with each character of s and whether the rule escapes it;
// a byte that is not UTF-8 comes alone, with r set to none.
func walk(s string, f func(raw string, r rune, escape bool)) {
	prev := rune(none)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			f(s[i:i+1], none, true)
			prev, i = none, i+1
			continue
		}
		f(s[i:i+size], r, escaped(prev, r, following(s[i+size:])))
		prev, i = r, i+size
	}
}

// following returns the first character of rest, or none.
func following(rest string) rune {
	if rest == "" {
		return none
	}
	r, size := utf8.DecodeRuneInString(rest)
	if r == utf8.RuneError && size == 1 {
		return none
	}
	return r
}

// String returns s as one field is shown: unchanged when it holds nothing
// the package rule escapes, and otherwise in Go's escaped form, newlines
// and backslashes included.
func String(s string) string {
	return show(s, false)
}

// Text returns s as a message of several lines is shown: like String,
// except that a newline stays a line break.
func Text(s string) string {
	return show(s, true)
}

func show(s string, lines bool) string {
	if plain(s, false) {
		return s
	}
	found := false
	walk(s, func(_ string, r rune, escape bool) {
		found = found || escape && !(lines && r == '\n')
	})
	if !found {
		return s
	}
	return string(appendEscaped(nil, s, lines, true))
}

// appendEscaped appends s to b with every character the rule names
// escaped, newlines kept when lines is set, and backslashes doubled when
// backslashes is set.
func appendEscaped(b []byte, s string, lines, backslashes bool) []byte {
	walk(s, func(raw string, r rune, escape bool) {
		switch {
		case r == none:
			b = fmt.Appendf(b, `\x%02x`, raw[0])
		case r == '\\' && backslashes:
			b = append(b, `\\`...)
		case !escape || lines && r == '\n':
			b = append(b, raw...)
		case r == '\a':
			b = append(b, `\a`...)
		case r == '\b':
			b = append(b, `\b`...)
		case r == '\f':
			b = append(b, `\f`...)
		case r == '\n':
			b = append(b, `\n`...)
		case r == '\r':
			b = append(b, `\r`...)
		case r == '\t':
			b = append(b, `\t`...)
		case r == '\v':
			b = append(b, `\v`...)
		case r < 0x80:
			b = fmt.Appendf(b, `\x%02x`, r)
		case r <= 0xffff:
			b = fmt.Appendf(b, `\u%04x`, r)
		default:
			b = fmt.Appendf(b, `\U%08x`, r)
		}
	})
	return b
}

// Fprintf formats like fmt.Fprintf, with every string, []string and error
// argument shown as String shows it: the format is the program's, the
// arguments may come from devices and requests. Other arguments (numbers,
// booleans, durations) are formatted as fmt formats them, so text must be
// passed as a string. Use %s for text: %q would quote the escapes again.
func Fprintf(w io.Writer, format string, args ...any) (int, error) {
	shown := make([]any, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case string:
			shown[i] = String(v)
		case []string:
			s := make([]string, len(v))
			for j := range v {
				s[j] = String(v[j])
			}
			shown[i] = s
		case error:
			shown[i] = String(v.Error())
		default:
			shown[i] = a
		}
	}
	return fmt.Fprintf(w, format, shown...)
}

// JSON returns the JSON text b with every character the package rule
// names, other than the JSON whitespace tab, newline and carriage return,
// written as a \uXXXX escape (a surrogate pair beyond U+FFFF). Such
// characters can only stand inside strings in valid JSON, so the result
// is valid JSON that decodes to the same values. b should be an encoder's
// output, which is UTF-8: a byte that is not becomes \ufffd, as
// encoding/json writes it. b is returned as it is when nothing changes.
func JSON(b []byte) []byte {
	if plain(b, true) {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	walk(string(b), func(raw string, r rune, escape bool) {
		switch {
		case r == none:
			out = append(out, `\ufffd`...)
		case !escape || r == '\t' || r == '\n' || r == '\r':
			out = append(out, raw...)
		case r > 0xffff:
			hi, lo := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, hi, lo)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
	})
	return out
}

// NewTextHandler returns slog's TextHandler writing to w, with the
// characters it writes raw (DEL) escaped where they stand. The rest of
// the record is left as slog wrote it: its quoted values already double
// their backslashes. slog writes each record with one Write, which is
// what lets a record be checked whole.
func NewTextHandler(w io.Writer, opts *slog.HandlerOptions) slog.Handler {
	return slog.NewTextHandler(recordWriter{w: w, show: func(p []byte) []byte {
		if plain(p, false) || plain(p[:len(p)-1], false) && p[len(p)-1] == '\n' {
			return p
		}
		return appendEscaped(nil, string(p), true, false)
	}}, opts)
}

// NewJSONHandler returns slog's JSONHandler writing to w, with its records
// passed through JSON.
func NewJSONHandler(w io.Writer, opts *slog.HandlerOptions) slog.Handler {
	return slog.NewJSONHandler(recordWriter{w: w, show: JSON}, opts)
}

// recordWriter writes each record slog hands it in its shown form.
type recordWriter struct {
	w    io.Writer
	show func([]byte) []byte
}

func (r recordWriter) Write(p []byte) (int, error) {
	if _, err := r.w.Write(r.show(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
