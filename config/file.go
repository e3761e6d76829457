package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/claude-sandbox/claude-sandbox/nixgen"
	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// Kind is the TOML type a setting takes.
type Kind int

const (
	Bool Kind = iota
	String
	List
	// Table is a [secrets.NAME] table (package secrets reads it); it is
	// not in Keys and stands only in a Widening.
	Table
)

// Key describes one setting a configuration file may hold. Settings are
// named like the flags they stand for; a switch whose flag is a negation
// (--no-network) is named positively (network = false).
type Key struct {
	Name string
	Kind Kind
	// Choices limits a String setting (nil: any string).
	Choices []string
	// Grants, for a Bool, is the value that gives the sandbox more access;
	// nil means neither value does (tmux).
	Grants *bool
	// AlwaysWidens: any value a project sets widens access (env, modules,
	// nixpkgs, which run or reveal what the user did not choose).
	AlwaysWidens bool
	// Ranks orders a String setting's choices from the one that gives the
	// sandbox least to the one that gives it most: a project's choice
	// ranked above the user's (or the default's) widens access.
	Ranks []string
	Doc   string
}

func ptr(b bool) *bool { return &b }

// Keys are every setting, in the order `config` shows them.
var Keys = []Key{
	{Name: "backend", Kind: String, Choices: nixgen.Backends, Doc: "sandbox backend"},
	{Name: "with", Kind: List, Doc: "extra nixpkgs packages (attribute paths)"},
	{Name: "network", Kind: String, Choices: []string{"allowlist", "none", "open", "learn"}, Ranks: []string{"none", "allowlist", "learn", "open"},
		Doc: "network inside, through the sandbox's proxy: allowlist (the allow rules), open (every public destination), learn (open, and record what was reached), none"},
	{Name: "allow", Kind: List, AlwaysWidens: true, Doc: "destinations the network proxy allows: host names (*.example.com), :port, methods, addresses and networks"},
	{Name: "deny", Kind: List, Doc: "destinations the network proxy refuses, whatever allows them"},
	{Name: "nix-daemon", Kind: Bool, Grants: ptr(true), Doc: "Nix inside, through the Nix daemon gateway"},
	{Name: "nix-unsandboxed-builds", Kind: Bool, Grants: ptr(true), Doc: "let builds through the gateway on a host daemon that does not sandbox them"},
	{Name: "desktop", Kind: Bool, Grants: ptr(true), Doc: "forward display, audio, D-Bus, keyring and GPU"},
	{Name: "protect", Kind: Bool, Grants: ptr(false), Doc: "keep what the host runs by itself read-only inside (~/.claude's configuration, .claude/, .mcp.json, .envrc, .vscode/, .idea/, git's config and hooks)"},
	{Name: "unprotect", Kind: List, AlwaysWidens: true, Doc: "protected paths left writable (.vscode, .git, ~/.claude/settings.json)"},
	{Name: "protect-git", Kind: Bool, Grants: ptr(false), Doc: "keep .git/config and .git/hooks read-only (false is unprotect = [\".git\"])"},
	{Name: "tmux", Kind: Bool, Doc: "run Claude Code inside tmux"},
	{Name: "accel", Kind: String, Choices: []string{"auto", "kvm", "tcg"}, Doc: "vm accelerator"},
	{Name: "fs", Kind: String, Choices: []string{"9p", "virtiofs"}, Doc: "vm project share"},
	{Name: "env", Kind: List, AlwaysWidens: true, Doc: "host environment variables passed in"},
	{Name: "gh-token", Kind: Bool, Grants: ptr(true), Doc: "bind GH_TOKEN and GITHUB_TOKEN to GitHub's hosts (placeholders inside)"},
	{Name: "claude-login", Kind: String, Choices: []string{"placeholder", "real"}, Ranks: []string{"placeholder", "real"},
		Doc: "Claude Code's login inside: placeholder (a copy holding placeholders the proxy fills in) or real (the host's file as it is)"},
	{Name: "ssh-keys", Kind: List, Doc: "the host SSH agent's keys the sandbox may use (SHA256 fingerprints or public keys; default: all)"},
	{Name: "modules", Kind: List, AlwaysWidens: true, Doc: "extra NixOS modules (container, vm): code run as root in the guest"},
	{Name: "nixpkgs", Kind: String, AlwaysWidens: true, Doc: "the nixpkgs the sandbox is built from"},
	{Name: "sudo", Kind: Bool, Grants: ptr(true), Doc: "re-run through sudo for the container backend"},
}

// KeyByName finds a key of Keys.
func KeyByName(name string) (Key, bool) {
	for _, k := range Keys {
		if k.Name == name {
			return k, true
		}
	}
	return Key{}, false
}

// fileSettings is the TOML shape, decoded strictly: an unknown key is an
// error with its line, never silently ignored (a typo like `netwrok = false`
// would otherwise leave the network on).
type fileSettings struct {
	Backend *string  `toml:"backend"`
	With    []string `toml:"with"`
	// Network is a mode ("allowlist", "open", "none", "learn"), or the
	// older switch (true: open, false: none).
	Network              any      `toml:"network"`
	Allow                []string `toml:"allow"`
	Deny                 []string `toml:"deny"`
	NixDaemon            *bool    `toml:"nix-daemon"`
	NixUnsandboxedBuilds *bool    `toml:"nix-unsandboxed-builds"`
	Desktop              *bool    `toml:"desktop"`
	Protect              *bool    `toml:"protect"`
	Unprotect            []string `toml:"unprotect"`
	ProtectGit           *bool    `toml:"protect-git"`
	Tmux                 *bool    `toml:"tmux"`
	Accel                *string  `toml:"accel"`
	FS                   *string  `toml:"fs"`
	Env                  []string `toml:"env"`
	GHToken              *bool    `toml:"gh-token"`
	Modules              []string `toml:"modules"`
	Nixpkgs              *string  `toml:"nixpkgs"`
	Sudo                 *bool    `toml:"sudo"`
	SSHKeys              []string `toml:"ssh-keys"`
	ClaudeLogin          *string  `toml:"claude-login"`
	// Secrets are the [secrets] tables, which package secrets checks.
	Secrets any `toml:"secrets"`
}

func (s *fileSettings) values() map[string]any {
	out := map[string]any{}
	put := func(name string, set bool, v any) {
		if set {
			out[name] = v
		}
	}
	deref := func(p *bool) any {
		if p == nil {
			return nil
		}
		return *p
	}
	str := func(p *string) any {
		if p == nil {
			return nil
		}
		return *p
	}
	put("backend", s.Backend != nil, str(s.Backend))
	put("with", s.With != nil, s.With)
	switch v := s.Network.(type) {
	case bool:
		out["network"] = map[bool]string{true: "open", false: "none"}[v]
	case string:
		out["network"] = v
	case nil:
	default:
		out["network"] = fmt.Sprint(v) // refused by the choices check
	}
	put("allow", s.Allow != nil, s.Allow)
	put("deny", s.Deny != nil, s.Deny)
	put("nix-daemon", s.NixDaemon != nil, deref(s.NixDaemon))
	put("nix-unsandboxed-builds", s.NixUnsandboxedBuilds != nil, deref(s.NixUnsandboxedBuilds))
	put("desktop", s.Desktop != nil, deref(s.Desktop))
	put("protect", s.Protect != nil, deref(s.Protect))
	put("unprotect", s.Unprotect != nil, s.Unprotect)
	put("protect-git", s.ProtectGit != nil, deref(s.ProtectGit))
	put("tmux", s.Tmux != nil, deref(s.Tmux))
	put("accel", s.Accel != nil, str(s.Accel))
	put("fs", s.FS != nil, str(s.FS))
	put("env", s.Env != nil, s.Env)
	put("gh-token", s.GHToken != nil, deref(s.GHToken))
	put("modules", s.Modules != nil, s.Modules)
	put("nixpkgs", s.Nixpkgs != nil, str(s.Nixpkgs))
	put("sudo", s.Sudo != nil, deref(s.Sudo))
	put("ssh-keys", s.SSHKeys != nil, s.SSHKeys)
	put("claude-login", s.ClaudeLogin != nil, str(s.ClaudeLogin))
	return out
}

// Setting is one key a file sets.
type Setting struct {
	Key  Key
	Bool bool
	Str  string
	List []string
	Line int // where the key is written, for messages (0: not found)
}

// Value renders the setting as TOML would write it.
func (s Setting) Value() string {
	switch s.Key.Kind {
	case Bool:
		return fmt.Sprint(s.Bool)
	case String:
		return fmt.Sprintf("%q", s.Str)
	case Table:
		return "{…}"
	}
	q := make([]string, len(s.List))
	for i, v := range s.List {
		q[i] = fmt.Sprintf("%q", v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// File is one loaded configuration file.
type File struct {
	Path    string // absolute, as found (the project's copy, not a symlink's target)
	Dir     string // relative paths in the file are relative to this
	Content []byte
	// Settings in Keys order. Paths (modules, a nixpkgs path) are absolute.
	Settings []Setting
	// Secrets are its [secrets] tables (nil: none).
	Secrets *secrets.Config
}

// SecretsOf is a file's [secrets] (nil for no file).
func SecretsOf(f *File) *secrets.Config {
	if f == nil {
		return nil
	}
	return f.Secrets
}

// Get returns the setting for a key, if the file sets it.
func (f *File) Get(name string) (Setting, bool) {
	if f == nil {
		return Setting{}, false
	}
	for _, s := range f.Settings {
		if s.Key.Name == name {
			return s, true
		}
	}
	return Setting{}, false
}

// maxFileSize bounds what is read: a configuration file is a few lines.
const maxFileSize = 64 << 10

// FileError is a configuration file that cannot be used.
type FileError struct {
	Path      string
	Line, Col int
	Msg       string
	hint      string
}

func (e *FileError) Error() string {
	switch {
	case e.Line > 0 && e.Col > 0:
		return fmt.Sprintf("%s:%d:%d: %s", e.Path, e.Line, e.Col, e.Msg)
	case e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Msg)
}

func (e *FileError) Hint() string {
	if e.hint != "" {
		return e.hint
	}
	return "known keys: " + strings.Join(keyNames(), ", ") + " (README: \"Configuration and trust\")"
}

func keyNames() []string {
	out := make([]string, len(Keys))
	for i, k := range Keys {
		out[i] = k.Name
	}
	return out
}

// Load reads and checks one file. A missing file is (nil, nil).
func Load(path string) (*File, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &FileError{Path: path, Msg: err.Error()}
	}
	f, err := os.Open(abs)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &FileError{Path: abs, Msg: err.Error()}
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, &FileError{Path: abs, Msg: "not a regular file"}
	}
	content, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, &FileError{Path: abs, Msg: err.Error()}
	}
	if len(content) > maxFileSize {
		return nil, &FileError{Path: abs, Msg: "larger than 64 KiB", hint: "a configuration file holds a few settings"}
	}
	return Parse(abs, content)
}

// Parse checks a file's content. path must be absolute.
func Parse(path string, content []byte) (*File, error) {
	var raw fileSettings
	dec := toml.NewDecoder(bytes.NewReader(content))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, decodeError(path, err)
	}
	file := &File{Path: path, Dir: filepath.Dir(path), Content: content}
	values := raw.values()
	for _, k := range Keys {
		v, ok := values[k.Name]
		if !ok {
			continue
		}
		s := Setting{Key: k, Line: lineOf(content, k.Name)}
		switch k.Kind {
		case Bool:
			s.Bool = v.(bool)
		case String:
			s.Str = v.(string)
		case List:
			s.List = slices.Clone(v.([]string))
		}
		if err := file.check(&s); err != nil {
			return nil, err
		}
		file.Settings = append(file.Settings, s)
	}
	if raw.Secrets != nil {
		sc, err := secrets.Parse(path, content)
		if err != nil {
			var ce *secrets.ConfigError
			if errors.As(err, &ce) {
				return nil, &FileError{Path: path, Line: ce.Line, Msg: ce.Key + ": " + ce.Msg, hint: ce.Hint()}
			}
			return nil, &FileError{Path: path, Msg: err.Error()}
		}
		file.Secrets = sc
	}
	return file, nil
}

// check validates one setting and makes its paths absolute.
func (f *File) check(s *Setting) error {
	bad := func(msg, hint string) error {
		return &FileError{Path: f.Path, Line: s.Line, Msg: s.Key.Name + ": " + msg, hint: hint}
	}
	if s.Key.Choices != nil && !slices.Contains(s.Key.Choices, s.Str) {
		return bad(fmt.Sprintf("%q is not one of %s", s.Str, strings.Join(s.Key.Choices, ", ")),
			fmt.Sprintf("%s = %q", s.Key.Name, s.Key.Choices[0]))
	}
	switch s.Key.Name {
	case "with":
		for _, name := range s.List {
			if _, err := nixgen.ParseAttrPath(strings.TrimSpace(name)); err != nil {
				var ip *nixgen.InvalidPackageError
				if errors.As(err, &ip) {
					return bad(ip.Error(), ip.Hint())
				}
				return bad(err.Error(), "")
			}
		}
	case "env":
		for _, name := range s.List {
			if !envName(name) {
				return bad(fmt.Sprintf("%q is not an environment variable name", name), "env lists names only, e.g. env = [\"OPENAI_API_KEY\"]")
			}
		}
	case "modules":
		for i, p := range s.List {
			s.List[i] = f.abs(p)
		}
	case "unprotect":
		for _, p := range s.List {
			if !unprotectPath(p) {
				return bad(fmt.Sprintf("%q is not a path in the project or in ~/.claude", p), `unprotect names paths relative to the project or in ~/.claude, e.g. unprotect = [".vscode", "~/.claude/settings.json"]`)
			}
		}
	case "nixpkgs":
		if s.Str == "" {
			return bad("empty", "a path or a flake reference, e.g. nixpkgs = \"github:NixOS/nixpkgs/nixos-unstable\"")
		}
		if isRelativePath(s.Str) {
			s.Str = f.abs(s.Str)
		}
	}
	return nil
}

// abs resolves a path written in the file: ~/ is the user's home, anything
// else relative is relative to the file's directory (so a project's
// `modules = ["./sandbox.nix"]` means the project's file wherever it runs).
func (f *File) abs(p string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(f.Dir, p)
}

// isRelativePath tells a relative path from a flake reference, as the
// nixpkgs flag does (closure: ./ and ../ are paths, github:… is not).
func isRelativePath(ref string) bool {
	return strings.HasPrefix(ref, "./") || strings.HasPrefix(ref, "../") || ref == "." || ref == ".."
}

// unprotectPath is the shape of an unprotect entry: relative to the
// project and inside it, or ~/.claude and what it holds. The launch checks
// that it names something protected.
func unprotectPath(p string) bool {
	if p == "" || strings.ContainsAny(p, "\x00\n") {
		return false
	}
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		c := filepath.Clean(rest)
		return c == ".claude" || strings.HasPrefix(c, ".claude/")
	}
	c := filepath.Clean(p)
	return !filepath.IsAbs(p) && c != "." && c != ".." && !strings.HasPrefix(c, "../")
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

// decodeError turns the TOML library's errors into one positioned line.
func decodeError(path string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		first := strict.Errors[0]
		row, col := first.Position()
		key := strings.Join(first.Key(), ".")
		msg := fmt.Sprintf("unknown key %q", key)
		if len(strict.Errors) > 1 {
			msg += fmt.Sprintf(" (and %d more)", len(strict.Errors)-1)
		}
		return &FileError{Path: path, Line: row, Col: col, Msg: msg}
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if k, ok := KeyByName(strings.Join(de.Key(), ".")); ok && strings.HasPrefix(msg, "cannot decode TOML") {
			// The library names Go types; say what the key takes instead.
			got := strings.Fields(strings.TrimPrefix(msg, "cannot decode TOML "))
			msg = fmt.Sprintf("%s takes %s, not a TOML %s", k.Name, kindWords[k.Kind], got[0])
		}
		return &FileError{Path: path, Line: row, Col: col, Msg: msg,
			hint: "lists are written with brackets: with = [\"python3\"]; switches are true or false"}
	}
	return &FileError{Path: path, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
}

var kindWords = map[Kind]string{
	Bool:   "true or false",
	String: "a quoted string",
	List:   `a list of strings (["a", "b"])`,
}

// lineOf finds where a top-level key is written, for messages about its
// value (the TOML library reports positions only for its own errors).
func lineOf(content []byte, key string) int {
	for i, line := range strings.Split(string(content), "\n") {
		t := strings.TrimSpace(line)
		for _, spelled := range []string{key, `"` + key + `"`, "'" + key + "'"} {
			if rest, ok := strings.CutPrefix(t, spelled); ok && strings.HasPrefix(strings.TrimSpace(rest), "=") {
				return i + 1
			}
		}
	}
	return 0
}
