package flagdoc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Usage is one command line of a binary that a page shows.
type Usage struct {
	File string
	Line int
	Text string   // the command line as written
	Args []string // its words after the binary's name
}

func (u Usage) String() string { return fmt.Sprintf("%s:%d: %s", u.File, u.Line, u.Text) }

// shellLanguages are the languages of fenced blocks that hold command
// lines.
var shellLanguages = map[string]bool{"console": true, "sh": true, "bash": true, "shell": true, "powershell": true, "ps1": true, "bat": true, "cmd": true}

// inlineCode is a code span of a Markdown line.
var inlineCode = regexp.MustCompile("`([^`]+)`")

// Usages finds the command lines of binary on the Markdown pages: lines
// of fenced blocks (a shell prompt, sudo and environment assignments
// before it are dropped) and code spans that start with the binary's
// name. A line ends at a pipe, a redirection, a command separator or a
// comment.
func Usages(files []string, binary string) ([]Usage, error) {
	var out []Usage
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		fenced, shell := false, false
		for n := 1; sc.Scan(); n++ {
			line := strings.ReplaceAll(sc.Text(), `\|`, "|") // a | escaped in a table
			if fence := strings.TrimSpace(line); strings.HasPrefix(fence, "```") {
				fenced = !fenced
				shell = fenced && shellLanguages[strings.TrimPrefix(fence, "```")]
				continue
			}
			if fenced {
				if !shell {
					continue
				}
				// A line continued with a backslash goes on in the next.
				first := n
				for strings.HasSuffix(line, "\\") && sc.Scan() {
					n++
					line = strings.TrimSuffix(line, "\\") + " " + strings.TrimSpace(sc.Text())
				}
				if words, ok := commandWords(line, binary, true); ok {
					out = append(out, Usage{File: filepath.ToSlash(file), Line: first, Text: strings.TrimSpace(line), Args: words})
				}
				continue
			}
			for _, m := range inlineCode.FindAllStringSubmatch(line, -1) {
				if words, ok := commandWords(m[1], binary, false); ok {
					out = append(out, Usage{File: filepath.ToSlash(file), Line: n, Text: strings.TrimSpace(m[1]), Args: words})
				}
			}
		}
	}
	return out, nil
}

// commandWords splits a shell line into the words after binary, if the
// line runs it. Without pipes, | is a word's part (a code span in prose
// writes alternatives so: -o text|json).
func commandWords(line, binary string, pipes bool) ([]string, bool) {
	words := shellWords(line, pipes)
	for len(words) > 0 {
		w := words[0]
		switch {
		case w == "$" || w == "#" || w == "sudo" || w == "PS>" || w == ">":
			words = words[1:]
			continue
		case strings.Contains(w, "=") && !strings.HasPrefix(w, "-"):
			words = words[1:] // VAR=value
			continue
		}
		break
	}
	if len(words) == 0 || filepath.Base(words[0]) != binary {
		return nil, false
	}
	words = words[1:]
	for i, w := range words {
		if w == "|" || w == "&&" || w == "||" || w == ";" || w == "&" || w == "#" || strings.HasPrefix(w, ">") || strings.HasPrefix(w, "2>") {
			return words[:i], true
		}
	}
	return words, true
}

// shellWords splits s at blanks, keeping quoted parts and command
// substitutions $(…) together (quotes removed).
func shellWords(s string, pipes bool) []string {
	var words []string
	var cur strings.Builder
	in, quote, depth := false, rune(0), 0
	prev := rune(0)
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case depth > 0:
			cur.WriteRune(r)
			switch r {
			case '(':
				depth++
			case ')':
				depth--
			}
		case r == '(' && prev == '$':
			cur.WriteRune(r)
			depth = 1
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ';' || r == '&' || r == '|' && pipes:
			// Unquoted, these end a command even inside a word.
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
			words = append(words, string(r))
		case r == ' ' || r == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
		prev = r
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}

// tidy takes the reader's notation out of a command line's words:
// brackets around optional parts (their words stay, to be checked), and
// a last word "…" (whatever else the reader adds).
func tidy(args []string) []string {
	var out []string
	for _, w := range args {
		w = strings.TrimSuffix(strings.TrimPrefix(w, "["), "]")
		if w != "" {
			out = append(out, w)
		}
	}
	if n := len(out); n > 0 && (out[n-1] == "…" || out[n-1] == "...") && (n == 1 || !strings.HasPrefix(out[n-2], "-")) {
		out = out[:n-1]
	}
	return out
}

// CheckUsage says what is wrong with a command line of the binary whose
// command tree newRoot builds: a command that does not exist, a flag the
// command does not have, or arguments it does not take. Optional parts
// in brackets are checked as if given; "a|b" in a command's place is
// each of a and b. A command named alone (a mention in prose, say) need
// only exist.
func CheckUsage(newRoot func() *cobra.Command, args []string) error {
	kept := tidy(args)
	// Alternatives (a command, a value): check each.
	for i, w := range kept {
		if alts := strings.Split(w, "|"); len(alts) > 1 {
			for _, a := range alts {
				next := append(append(append([]string{}, kept[:i]...), a), kept[i+1:]...)
				if err := CheckUsage(newRoot, next); err != nil {
					return err
				}
			}
			return nil
		}
	}
	root := newRoot()
	cmd, rest, err := root.Find(kept)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return nil
	}
	cmd.InitDefaultHelpFlag()
	// A flag named last, without its value, is a mention of the flag.
	if last := rest[len(rest)-1]; strings.HasPrefix(last, "-") && !strings.Contains(last, "=") {
		rest = append(rest, "…")
	}
	// "…" stands for what the reader fills in: after a flag, its value
	// (the flag must exist; its value is not checked); elsewhere, other
	// flags.
	var given []string
	for i, w := range rest {
		if w == "…" || w == "..." {
			continue
		}
		if i+1 < len(rest) && strings.HasPrefix(w, "-") && !strings.Contains(w, "=") && (rest[i+1] == "…" || rest[i+1] == "...") {
			name := strings.TrimLeft(w, "-")
			f := cmd.Flags().Lookup(name)
			if f == nil && len(name) == 1 {
				f = cmd.Flags().ShorthandLookup(name)
			}
			if f == nil {
				return fmt.Errorf("%s: unknown flag: %s", cmd.CommandPath(), w)
			}
			continue
		}
		given = append(given, w)
	}
	if len(given) == 0 {
		return nil // flags named, to say they exist
	}
	// The command's flags by name, each taking any text: what the page
	// writes as a value may name files of the reader's machine.
	fs := pflag.NewFlagSet(cmd.Name(), pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	mirror := func(f *pflag.Flag) {
		if fs.Lookup(f.Name) == nil {
			g := fs.VarPF(new(anyText), f.Name, f.Shorthand, "")
			g.NoOptDefVal = f.NoOptDefVal
		}
	}
	cmd.Flags().VisitAll(mirror)
	cmd.InheritedFlags().VisitAll(mirror)
	if err := fs.Parse(given); err != nil && !errors.Is(err, pflag.ErrHelp) {
		return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	}
	pos := fs.Args()
	if !cmd.Runnable() {
		if len(pos) > 0 {
			return fmt.Errorf("%s has no command %q", cmd.CommandPath(), pos[0])
		}
		return nil // a group of commands, named as such
	}
	if err := cmd.ValidateArgs(pos); err != nil {
		return fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	}
	return nil
}

// anyText is a flag value that takes any text.
type anyText string

func (v *anyText) Set(s string) error { *v = anyText(s); return nil }
func (v *anyText) String() string     { return string(*v) }
func (v *anyText) Type() string       { return "string" }
