package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/claude-sandbox/claude-sandbox/internal/atomicfile"
)

// AddToList computes the file at path (missing: empty) with values added
// to its list key: the new content, and the change as removed (-) and
// added (+) lines for a person to read. Values it already lists are not
// added again; nothing to add gives an empty diff. The rest of the file —
// comments, other keys, their order — is kept as written.
func AddToList(path, key string, values []string) (diff string, updated []byte, err error) {
	content, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", nil, &FileError{Path: path, Msg: err.Error()}
	}
	var have map[string]any
	if err := toml.Unmarshal(content, &have); err != nil {
		return "", nil, decodeError(path, err)
	}
	var list []string
	if v, ok := have[key]; ok {
		items, ok := v.([]any)
		if !ok {
			return "", nil, &FileError{Path: path, Line: lineOf(content, key), Msg: key + ": not a list"}
		}
		for _, it := range items {
			s, ok := it.(string)
			if !ok {
				return "", nil, &FileError{Path: path, Line: lineOf(content, key), Msg: key + ": not a list of strings"}
			}
			list = append(list, s)
		}
	}
	var added []string
	for _, v := range values {
		if !slices.Contains(list, v) && !slices.Contains(added, v) {
			added = append(added, v)
		}
	}
	if len(added) == 0 {
		return "", content, nil
	}
	newLines := renderList(key, append(list, added...))
	lines := strings.Split(string(content), "\n")
	start, end := keySpan(lines, key)
	var out []string
	var b strings.Builder
	switch {
	case start >= 0:
		out = append(append(append(out, lines[:start]...), newLines...), lines[end:]...)
		for _, l := range lines[start:end] {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	default:
		// Before the first table: a key after a [table] header belongs to it.
		at := len(lines)
		if len(lines) > 0 && lines[len(lines)-1] == "" {
			at = len(lines) - 1
		}
		for i, l := range lines {
			if strings.HasPrefix(strings.TrimSpace(l), "[") {
				at = i
				break
			}
		}
		out = append(append(append(out, lines[:at]...), newLines...), lines[at:]...)
	}
	for _, l := range newLines {
		fmt.Fprintf(&b, "+ %s\n", l)
	}
	updated = []byte(strings.Join(out, "\n"))
	if !bytes.HasSuffix(updated, []byte("\n")) {
		updated = append(updated, '\n')
	}
	return b.String(), updated, nil
}

// WriteFile replaces a configuration file whole.
func WriteFile(path string, content []byte) error {
	if err := atomicfile.Write(path, content, 0o644); err != nil {
		return &FileError{Path: path, Msg: err.Error()}
	}
	return nil
}

func renderList(key string, values []string) []string {
	out := []string{key + " = ["}
	for _, v := range values {
		out = append(out, fmt.Sprintf("  %q,", v))
	}
	return append(out, "]")
}

// keySpan finds a top-level key's lines [start, end): from its `key =` to
// the line closing its value; -1 when the file does not set it.
func keySpan(lines []string, key string) (int, int) {
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") {
			return -1, -1 // a table: top-level keys come before
		}
		rest, ok := strings.CutPrefix(t, key)
		if !ok || !strings.HasPrefix(strings.TrimSpace(rest), "=") {
			continue
		}
		depth := 0
		for j := i; j < len(lines); j++ {
			depth += strings.Count(lines[j], "[") - strings.Count(lines[j], "]")
			if depth <= 0 {
				return i, j + 1
			}
		}
		return i, len(lines)
	}
	return -1, -1
}
