package cliflag

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// File is a configuration file: a YAML mapping whose keys are the names of
// flags (without the dashes) and whose values are what the flags would be
// given. A list is given to a repeatable flag (one whose value is a
// pflag.SliceValue, as --webhook) item by item, as if the flag were
// repeated; to any other flag joined by commas.
type File struct {
	Path    string
	Entries []Entry
}

// Entry is one key of a configuration file, with its line.
type Entry struct {
	Key   string
	Value string
	Line  int
	// Items are the list's values and their lines, when the value is a
	// list (Value then holds them joined by commas).
	Items []Item
}

// Item is one value of a list, with its line.
type Item struct {
	Value string
	Line  int
}

// ReadFile reads the configuration file at path. keys are the keys the
// file may hold: any other is an error that names the file, the line and
// the key. A missing file is an error wrapping fs.ErrNotExist.
func ReadFile(path string, keys []string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f := &File{Path: path}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return f, nil // empty, or only comments
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d: want a mapping of keys to values (listen: 0.0.0.0:8443)", path, root.Line)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		if !slices.Contains(keys, key) {
			hint := ""
			if near := nearest(key, keys); near != "" {
				hint = fmt.Sprintf(" (did you mean %s?)", near)
			}
			return nil, fmt.Errorf("%s:%d: unknown key %q%s; the keys are the flags of the command: %s", path, k.Line, key, hint, strings.Join(keys, ", "))
		}
		if line, ok := seen[key]; ok {
			return nil, fmt.Errorf("%s:%d: key %q given again (first on line %d)", path, k.Line, key, line)
		}
		seen[key] = k.Line
		var value string
		switch v.Kind {
		case yaml.ScalarNode:
			if v.Tag == "!!null" {
				continue // "key:" with nothing: the default
			}
			value = v.Value
		case yaml.SequenceNode:
			var values []string
			items := []Item{}
			for _, it := range v.Content {
				if it.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("%s:%d: %s: want a list of plain values", path, it.Line, key)
				}
				values = append(values, it.Value)
				items = append(items, Item{Value: it.Value, Line: it.Line})
			}
			f.Entries = append(f.Entries, Entry{Key: key, Value: strings.Join(values, ","), Line: v.Line, Items: items})
			continue
		default:
			return nil, fmt.Errorf("%s:%d: %s: want a value or a list, not a mapping", path, v.Line, key)
		}
		f.Entries = append(f.Entries, Entry{Key: key, Value: value, Line: v.Line})
	}
	return f, nil
}

// Apply sets the flags of fs that the command line did not set from the
// file. A key that is not a flag of fs is left for other commands. A bad
// value is an error naming the file, the line and the key.
func (f *File) Apply(fs *pflag.FlagSet) error {
	for _, e := range f.Entries {
		fl := fs.Lookup(e.Key)
		if fl == nil || fl.Changed {
			continue // another command's, or overridden on the command line
		}
		if sv, ok := fl.Value.(pflag.SliceValue); ok {
			items := e.Items
			if items == nil { // a single value: a list of one
				items = []Item{{Value: e.Value, Line: e.Line}}
			}
			if err := sv.Replace(nil); err != nil {
				return fmt.Errorf("%s:%d: %s: %w", f.Path, e.Line, e.Key, err)
			}
			for _, it := range items {
				if err := sv.Append(it.Value); err != nil {
					return fmt.Errorf("%s:%d: %s: %w", f.Path, it.Line, e.Key, err)
				}
			}
			continue
		}
		if err := fl.Value.Set(e.Value); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", f.Path, e.Line, e.Key, err)
		}
	}
	return nil
}

// Load reads path and applies it to fs. A missing file is no error when
// optional (the default path), and an error otherwise.
func Load(path string, optional bool, keys []string, fs *pflag.FlagSet) (*File, error) {
	f, err := ReadFile(path, keys)
	if errors.Is(err, iofs.ErrNotExist) && optional {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configuration file: %w", err)
	}
	return f, f.Apply(fs)
}

// nearest is the key closest to k by edit distance, when close enough to
// be a typing slip.
func nearest(k string, keys []string) string {
	best, bestD := "", 3
	for _, c := range keys {
		if d := distance(k, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// Example is a configuration file in which every key of fs that keys
// names is written out, commented, with its default and its help: the file
// packages install, where removing the # before a key sets it.
func Example(header string, fs *pflag.FlagSet, keys []string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(header), "\n") {
		b.WriteString(strings.TrimRight("# "+l, " ") + "\n")
	}
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil {
			continue
		}
		b.WriteString("\n")
		for _, l := range wrap(f.Usage, 74) {
			b.WriteString("# " + l + "\n")
		}
		def := f.DefValue
		if _, ok := f.Value.(pflag.SliceValue); ok {
			def = "[]"
		} else if def == "" || strings.ContainsAny(def, ":#{}[]&*!|>'\"%@`") {
			def = fmt.Sprintf("%q", def)
		}
		b.WriteString("#" + k + ": " + def + "\n")
	}
	return b.String()
}

// wrap breaks s into lines of at most width characters at spaces.
func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}
