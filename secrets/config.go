package secrets

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	toml "github.com/pelletier/go-toml/v2"
)

// Table is the configuration key that holds the secrets.
const Table = "secrets"

// Config is the [secrets] tables of one configuration file.
type Config struct {
	Path    string
	Secrets []Binding // sorted by name
}

// ConfigError is a [secrets] entry that cannot be used.
type ConfigError struct {
	Path string
	Line int
	Key  string // "secrets.NAME.key"
	Msg  string
	hint string
}

func (e *ConfigError) Error() string {
	loc := e.Path
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.Path, e.Line)
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Key, e.Msg)
}

// Hint is a one-line suggestion.
func (e *ConfigError) Hint() string {
	if e.hint != "" {
		return e.hint
	}
	return `a secret is a table: [secrets.NAME] with hosts = ["api.example.com"] and one of env = "VAR", command = ["pass", "show", "x"], file = "/run/agenix/x" (docs/secrets.md)`
}

// secretKeys are the keys a [secrets.NAME] table may hold.
var secretKeys = []string{"variable", "hosts", "bodies", "env", "command", "file", "timeout", "prefix"}

// maxTimeout bounds a command's timeout: a launch waits for it.
const maxTimeout = 10 * time.Minute

// Parse reads the [secrets] tables of a configuration file (every other
// key is the caller's). Keys inside a secret's table are checked
// strictly: an unknown one is an error that names it. path is for
// messages; relative file paths are refused rather than guessed. A table
// may set only some keys (a project narrowing the hosts of the user's
// secret); Effective checks that each secret ends up complete.
func Parse(path string, content []byte) (*Config, error) {
	var doc map[string]any
	if err := toml.Unmarshal(content, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			return nil, &ConfigError{Path: path, Line: row, Key: Table, Msg: strings.TrimPrefix(de.Error(), "toml: ")}
		}
		return nil, &ConfigError{Path: path, Key: Table, Msg: err.Error()}
	}
	cfg := &Config{Path: path}
	raw, ok := doc[Table]
	if !ok {
		return cfg, nil
	}
	lines := strings.Split(string(content), "\n")
	tables, ok := raw.(map[string]any)
	if !ok {
		return nil, &ConfigError{Path: path, Line: keyLine(lines, Table), Key: Table, Msg: "is a table of secrets, not a value"}
	}
	names := make([]string, 0, len(tables))
	for name := range tables {
		names = append(names, name)
	}
	sort.Strings(names) // the same file reports the same first error
	for _, name := range names {
		b, err := parseSecret(path, lines, name, tables[name])
		if err != nil {
			return nil, err
		}
		cfg.Secrets = append(cfg.Secrets, b)
	}
	if err := uniqueVariables(cfg.Secrets); err != nil {
		return nil, err
	}
	return cfg, nil
}

func parseSecret(path string, lines []string, name string, v any) (Binding, error) {
	header := tableLine(lines, name)
	b := Binding{Name: name, Path: path, Line: header}
	bad := func(key, hint, format string, args ...any) error {
		k := Table + "." + name
		line := header
		if key != "" {
			k += "." + key
			if l := keyLineAfter(lines, header, key); l > 0 {
				line = l
			}
		}
		return &ConfigError{Path: path, Line: line, Key: k, Msg: fmt.Sprintf(format, args...), hint: hint}
	}
	if !printableName(name) {
		return b, bad("", "", "the name has a control character")
	}
	t, ok := v.(map[string]any)
	if !ok {
		return b, bad("", "", "is a table ([secrets.%s] with hosts and a source), not a value", name)
	}
	for key := range t {
		if !contains(secretKeys, key) {
			return b, bad(key, "a secret's keys: "+strings.Join(secretKeys, ", "), "unknown key %q", key)
		}
	}
	str := func(key string) (string, bool, error) {
		v, ok := t[key]
		if !ok {
			return "", false, nil
		}
		s, isStr := v.(string)
		if !isStr {
			return "", true, bad(key, "", "takes a quoted string, not %s", tomlKind(v))
		}
		return s, true, nil
	}
	list := func(key string) ([]string, bool, error) {
		v, ok := t[key]
		if !ok {
			return nil, false, nil
		}
		items, isList := v.([]any)
		if !isList {
			return nil, true, bad(key, "", `takes a list of strings (["a", "b"]), not %s`, tomlKind(v))
		}
		out := make([]string, len(items))
		for i, it := range items {
			s, isStr := it.(string)
			if !isStr {
				return nil, true, bad(key, "", "item %d is %s, not a quoted string", i+1, tomlKind(it))
			}
			out[i] = s
		}
		return out, true, nil
	}

	if s, ok, err := str("variable"); err != nil {
		return b, err
	} else if ok {
		if !envName(s) {
			return b, bad("variable", "e.g. variable = \"OPENAI_API_KEY\"", "%q is not an environment variable name", s)
		}
		b.Variable, b.set = s, b.set|setVariable
	}
	if hosts, ok, err := list("hosts"); err != nil {
		return b, err
	} else if ok {
		if len(hosts) == 0 {
			return b, bad("hosts", `e.g. hosts = ["api.openai.com"]`, "empty: a secret no host may receive is of no use")
		}
		for _, h := range hosts {
			p, err := ParseHost(h)
			if err != nil {
				return b, bad("hosts", `host names, "*.example.com" for the names below a domain, or an address; :port when not 443`, "%v", err)
			}
			b.Hosts = append(b.Hosts, p)
		}
		b.set |= setHosts
	}
	if v, ok := t["bodies"]; ok {
		on, isBool := v.(bool)
		if !isBool {
			return b, bad("bodies", "", "takes true or false, not %s", tomlKind(v))
		}
		b.Bodies, b.set = on, b.set|setBodies
	}
	if s, ok, err := str("prefix"); err != nil {
		return b, err
	} else if ok {
		if s == "" || len(s) > 32 || !printableASCII(s) {
			return b, bad("prefix", `e.g. prefix = "sk-proj-"`, "a prefix is 1 to 32 printable ASCII characters")
		}
		b.Prefix, b.set = s, b.set|setPrefix
	}
	if s, ok, err := str("timeout"); err != nil {
		return b, err
	} else if ok {
		d, perr := time.ParseDuration(s)
		if perr != nil || d < time.Second || d > maxTimeout {
			return b, bad("timeout", `e.g. timeout = "45s"`, "%q is not a duration from 1s to %s", s, maxTimeout)
		}
		b.Source.Timeout, b.set = d, b.set|setTimeout
	}

	var kinds []string
	if s, ok, err := str("env"); err != nil {
		return b, err
	} else if ok {
		if !envName(s) {
			return b, bad("env", `env names the host variable: env = "OPENAI_API_KEY"`, "%q is not an environment variable name", s)
		}
		b.Source.Kind, b.Source.Env = FromEnv, s
		kinds = append(kinds, "env")
	}
	if argv, ok, err := list("command"); err != nil {
		return b, err
	} else if ok {
		if err := checkCommand(argv); err != nil {
			return b, bad("command", `command = ["pass", "show", "openai"] runs pass from your PATH, without a shell`, "%v", err)
		}
		b.Source.Kind, b.Source.Command = FromCommand, argv
		kinds = append(kinds, "command")
	}
	if s, ok, err := str("file"); err != nil {
		return b, err
	} else if ok {
		p, err := absPath(s)
		if err != nil {
			return b, bad("file", `file = "/run/agenix/openai" or "~/.config/openai/key"`, "%v", err)
		}
		b.Source.Kind, b.Source.File = FromFile, p
		kinds = append(kinds, "file")
	}
	switch {
	case len(kinds) > 1:
		return b, bad(kinds[1], "keep one source", "a secret has one source; this one has %s", strings.Join(kinds, " and "))
	case len(kinds) == 1:
		b.set |= setSource
	}
	if b.Source.Timeout != 0 && b.Source.Kind != FromCommand && b.set&setSource != 0 {
		return b, bad("timeout", "", "only a command source takes a timeout")
	}

	return b, nil
}

// complete checks a secret once every layer is applied: a table may set
// only what it changes (a project narrowing the user's secret's hosts),
// but the result needs a source, hosts and a variable.
func complete(b Binding) error {
	bad := func(hint, format string, args ...any) error {
		return &ConfigError{Path: b.Path, Line: b.Line, Key: Table + "." + b.Name, Msg: fmt.Sprintf(format, args...), hint: hint}
	}
	if b.Source.Kind == "" {
		return bad("", "has no source: add env = \"VAR\", command = [...] or file = \"/path\"")
	}
	if len(b.Hosts) == 0 {
		return bad("", "has no hosts: add hosts = [\"api.example.com\"], the hosts that may receive it")
	}
	if !envName(b.variable()) {
		return bad(`e.g. [secrets.openai] variable = "OPENAI_API_KEY"`, "%q is not an environment variable name: set variable", b.Name)
	}
	return nil
}

// checkCommand refuses what would run something other than the user's
// own program: a relative path (the project directory, which the sandbox
// writes, would decide what runs on the host).
func checkCommand(argv []string) error {
	if len(argv) == 0 || argv[0] == "" {
		return fmt.Errorf("empty: name the program and its arguments")
	}
	for _, a := range argv {
		if strings.ContainsRune(a, 0) {
			return fmt.Errorf("an argument contains a NUL byte")
		}
	}
	prog := argv[0]
	if strings.HasPrefix(prog, "~/") || filepath.IsAbs(prog) || !strings.Contains(prog, "/") {
		return nil
	}
	return fmt.Errorf("%q is a relative path: name a program on your PATH or give an absolute path", prog)
}

// absPath accepts absolute paths and ~/ (the user's home).
func absPath(p string) (string, error) {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("%q: the home directory is not known", p)
		}
		return filepath.Join(home, rest), nil
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%q is not an absolute path", p)
	}
	return filepath.Clean(p), nil
}

func uniqueVariables(bs []Binding) error {
	seen := map[string]Binding{}
	for _, b := range bs {
		v := b.variable()
		if o, dup := seen[v]; dup {
			return &ConfigError{Path: b.Path, Line: b.Line, Key: Table + "." + b.Name,
				Msg:  fmt.Sprintf("fills %s, as %s (%s) does", v, o.Name, o.where()),
				hint: "each variable holds one secret: give one of them another variable"}
		}
		seen[v] = b
	}
	return nil
}

func (b Binding) variable() string {
	if b.Variable != "" {
		return b.Variable
	}
	return b.Name
}

// overlay applies the fields a file set onto a binding.
func overlay(base, o Binding) Binding {
	out := base
	out.Name, out.Path, out.Line = o.Name, o.Path, o.Line
	if o.set&setVariable != 0 {
		out.Variable = o.Variable
	}
	if o.set&setHosts != 0 {
		out.Hosts = o.Hosts
	}
	if o.set&setBodies != 0 {
		out.Bodies = o.Bodies
	}
	if o.set&setPrefix != 0 {
		out.Prefix = o.Prefix
	}
	if o.set&setSource != 0 {
		t := out.Source.Timeout
		out.Source = o.Source
		if o.set&setTimeout == 0 {
			out.Source.Timeout = t
		}
	}
	if o.set&setTimeout != 0 {
		out.Source.Timeout = o.Source.Timeout
	}
	if out.Variable == "" {
		out.Variable = out.Name
	}
	out.set |= o.set
	return out
}

// Effective layers configuration files (the user's, then a trusted
// project's) over the built-in bindings. A table for a built-in name
// changes only what it sets (a GitHub token's table also turns it on
// without --gh-token); any other table is a new secret.
func Effective(ghToken bool, layers ...*Config) ([]Binding, error) {
	byName := map[string]Binding{}
	var order []string
	for _, b := range BuiltIns(ghToken) {
		byName[b.Name] = b
		order = append(order, b.Name)
	}
	for _, layer := range layers {
		if layer == nil {
			continue
		}
		for _, o := range layer.Secrets {
			base, ok := byName[o.Name]
			if !ok {
				if bi, isBuiltIn := builtIn(o.Name); isBuiltIn {
					base = bi
				}
				order = append(order, o.Name)
			}
			byName[o.Name] = overlay(base, o)
		}
	}
	out := make([]Binding, 0, len(order))
	for _, n := range order {
		b := byName[n]
		if b.Source.Kind != FromCommand {
			b.Source.Timeout = 0
		}
		if err := complete(b); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	if err := uniqueVariables(out); err != nil {
		return nil, err
	}
	return out, nil
}

// Widening is a project's secret setting that gives the sandbox more than
// the user's own configuration does.
type Widening struct {
	Name string // the secret
	Path string
	Line int
	Why  string
}

func (w Widening) String() string {
	if w.Line > 0 {
		return fmt.Sprintf("line %d: [secrets.%s]: %s", w.Line, w.Name, w.Why)
	}
	return fmt.Sprintf("[secrets.%s]: %s", w.Name, w.Why)
}

// Widenings lists what a project's [secrets] widen, against base (the
// bindings in effect without the project: Effective of the built-ins and
// the user's file). A new secret widens (it reads a host secret and sends
// it out); so do a different source (another secret, or a command run on
// the host), a host the base does not cover, and bodies turned on.
// Narrowing — fewer hosts, bodies off, another variable name — does not.
func Widenings(project *Config, base []Binding) []Widening {
	if project == nil {
		return nil
	}
	byName := map[string]Binding{}
	for _, b := range base {
		byName[b.Name] = b
	}
	var out []Widening
	for _, p := range project.Secrets {
		add := func(format string, args ...any) {
			out = append(out, Widening{Name: p.Name, Path: p.Path, Line: p.Line, Why: fmt.Sprintf(format, args...)})
		}
		b, ok := byName[p.Name]
		if !ok {
			start := Binding{}
			if bi, isBuiltIn := builtIn(p.Name); isBuiltIn {
				start = bi
			}
			m := overlay(start, p)
			add("adds a secret read from %s and sent to %s", m.Source, strings.Join(m.HostTexts(), ", "))
			continue
		}
		m := overlay(b, p)
		if !m.Source.equal(b.Source) {
			add("reads it from %s instead of %s", m.Source, b.Source)
		}
		var extra []string
		for _, h := range m.Hosts {
			covered := false
			for _, bh := range b.Hosts {
				if bh.covers(h) {
					covered = true
					break
				}
			}
			if !covered {
				extra = append(extra, h.Text)
			}
		}
		if len(extra) > 0 {
			add("sends it to %s as well", strings.Join(extra, ", "))
		}
		if m.Bodies && !b.Bodies {
			add("puts it into request bodies, not only headers")
		}
	}
	return out
}

// tableLine finds where [secrets.NAME] is written (0: not found, e.g. an
// inline table).
func tableLine(lines []string, name string) int {
	for _, spelled := range []string{name, `"` + name + `"`, "'" + name + "'"} {
		want := strings.ReplaceAll("["+Table+"."+spelled+"]", " ", "")
		for i, l := range lines {
			if strings.ReplaceAll(strings.TrimSpace(stripComment(l)), " ", "") == want {
				return i + 1
			}
		}
	}
	return 0
}

// keyLineAfter finds `key =` in the table starting at line from.
func keyLineAfter(lines []string, from int, key string) int {
	if from <= 0 {
		return 0
	}
	for i := from; i < len(lines); i++ {
		t := strings.TrimSpace(lines[i])
		if strings.HasPrefix(t, "[") {
			return 0
		}
		if rest, ok := strings.CutPrefix(t, key); ok && strings.HasPrefix(strings.TrimSpace(rest), "=") {
			return i + 1
		}
	}
	return 0
}

func keyLine(lines []string, key string) int {
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if rest, ok := strings.CutPrefix(t, key); ok && strings.HasPrefix(strings.TrimSpace(rest), "=") {
			return i + 1
		}
	}
	return 0
}

func stripComment(l string) string {
	if i := strings.Index(l, "#"); i >= 0 {
		return l[:i]
	}
	return l
}

func tomlKind(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case bool:
		return "true or false"
	case int64, float64:
		return "a number"
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	}
	return "a date or time"
}

func envName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

func printableName(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
