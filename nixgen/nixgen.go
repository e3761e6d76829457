package nixgen

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// SchemaVersion is bumped whenever the request layout or the meaning of a
// key changes, so old cache entries stop matching.
const SchemaVersion = 1

// Backends that can be built: the one list of backend names. The launch
// side (launch/backends) and the Nix side (nix/variants.nix) are tested
// against it.
var Backends = []string{"bubblewrap", "container", "vm"}

// Variant is one closure of a backend's default configuration.
type Variant struct {
	Backend string `json:"backend"`
	Network bool   `json:"network"`
}

// Variants are the closures that cover every backend and network setting
// (`build --all`, the flake's packages and checks): one per backend, two
// where the network is built into the closure.
func Variants() []Variant {
	var out []Variant
	for _, b := range Backends {
		out = append(out, Variant{b, true})
		if NetworkInClosure(b) {
			out = append(out, Variant{b, false})
		}
	}
	return out
}

// Options are the build-time choices of a user: they change the closure.
type Options struct {
	Backend  string
	Packages []string // nixpkgs attribute paths, as typed: "python3", "python3Packages.numpy"
	Modules  []Module // extra NixOS modules (container, vm), from LoadModules
	Network  bool
}

// Nixpkgs says where nixpkgs is and what it is. Path is imported; Identity is
// what the key depends on (a store path, or a locked flake rev and narHash),
// so two spellings of one nixpkgs share a cache entry.
type Nixpkgs struct {
	Path     string `json:"path"`
	Identity string `json:"identity"`
}

// Canonical is the normalised form of Options: the only thing that reaches
// the key and the Nix side.
type Canonical struct {
	Backend  string     `json:"backend"`
	Packages [][]string `json:"packages"`
	// Modules keep their order: NixOS merges some options in module order.
	Modules []Module `json:"modules,omitempty"`
	// Nil for backends where the network is a run-time switch: toggling it
	// must not rebuild their closure.
	Network *bool `json:"network,omitempty"`
}

// Canonicalize validates every name and sorts and de-duplicates the package
// list, so that `--with b,a --with a` and `--with a,b` build one closure.
func Canonicalize(opts Options) (Canonical, error) {
	backend := opts.Backend
	if backend == "" {
		backend = "bubblewrap"
	}
	if !slices.Contains(Backends, backend) {
		return Canonical{}, &UnknownBackendError{Name: backend}
	}
	if len(opts.Packages) > maxPackages {
		return Canonical{}, &InvalidPackageError{Name: fmt.Sprintf("(%d names)", len(opts.Packages)), Reason: fmt.Sprintf("more than %d packages", maxPackages)}
	}
	seen := map[string]bool{}
	var names []string
	for _, raw := range opts.Packages {
		name := strings.TrimSpace(raw)
		if name == "" {
			continue // "--with a,,b" and a trailing comma are harmless
		}
		if _, err := ParseAttrPath(name); err != nil {
			return Canonical{}, err
		}
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(opts.Modules) > 0 && backend == "bubblewrap" {
		return Canonical{}, &ModuleError{Path: opts.Modules[0].Path, Reason: "NixOS modules apply to the container and vm backends, not bubblewrap"}
	}
	c := Canonical{Backend: backend, Packages: make([][]string, 0, len(names)), Modules: opts.Modules}
	for _, name := range names {
		parts, _ := ParseAttrPath(name)
		c.Packages = append(c.Packages, parts)
	}
	if NetworkInClosure(backend) {
		network := opts.Network
		c.Network = &network
	}
	return c, nil
}

// NetworkInClosure says whether the network switch changes what is built:
// the vm guest's configuration has it. For the others it is a launch-time
// switch (one bwrap or nspawn flag).
func NetworkInClosure(backend string) bool { return backend == "vm" }

// PackageNames returns the canonical package list as dotted names.
func (c Canonical) PackageNames() []string {
	out := make([]string, len(c.Packages))
	for i, p := range c.Packages {
		out[i] = strings.Join(p, ".")
	}
	return out
}

// Request is everything an evaluation needs.
type Request struct {
	Options      Canonical
	Nixpkgs      Nixpkgs
	System       string // e.g. x86_64-linux
	TemplatesDir string // where templates.Materialise put the bundle
	TemplatesID  string // templates.Digest()
}

// Generated is the output of Generate.
type Generated struct {
	Key         string // hex sha256; names the cache entry
	RequestJSON []byte // the data handed to templates/entry.nix
	Expr        string // a complete Nix expression, buildable with nix-build
}

// requestDoc is the JSON the entry template reads. Field names are the Nix
// attribute names in templates/entry.nix.
type requestDoc struct {
	Schema  int       `json:"schema"`
	Nixpkgs string    `json:"nixpkgs"`
	System  string    `json:"system"`
	Options Canonical `json:"options"`
}

// keyDoc lists exactly what the closure depends on. The templates' location
// on disk is not in it: the digest already names their content.
type keyDoc struct {
	Schema    int       `json:"schema"`
	Templates string    `json:"templates"`
	Nixpkgs   string    `json:"nixpkgs"`
	System    string    `json:"system"`
	Options   Canonical `json:"options"`
}

// Key computes the cache key without generating the expression: the warm
// launch path needs only this.
func Key(req Request) string {
	doc, _ := json.Marshal(keyDoc{
		Schema:    SchemaVersion,
		Templates: req.TemplatesID,
		Nixpkgs:   req.Nixpkgs.Identity,
		System:    req.System,
		Options:   req.Options,
	})
	sum := sha256.Sum256(doc)
	return hex.EncodeToString(sum[:])
}

// Generate produces the key, the request JSON and the entry expression.
func Generate(req Request) (Generated, error) {
	if !filepath.IsAbs(req.TemplatesDir) {
		return Generated{}, fmt.Errorf("templates directory %q is not absolute", req.TemplatesDir)
	}
	if !filepath.IsAbs(req.Nixpkgs.Path) {
		return Generated{}, fmt.Errorf("nixpkgs path %q is not absolute", req.Nixpkgs.Path)
	}
	doc, err := json.Marshal(requestDoc{
		Schema:  SchemaVersion,
		Nixpkgs: req.Nixpkgs.Path,
		System:  req.System,
		Options: req.Options,
	})
	if err != nil {
		return Generated{}, err
	}
	expr := fmt.Sprintf(`# Generated by claude-sandbox. Everything the user chose is in the JSON
# string below, as data; the templates directory holds the Nix code.
# Build it by hand with: nix-build <this file>
import (/. + %s) (builtins.fromJSON %s)
`, nixString(filepath.Join(req.TemplatesDir, "entry.nix")), nixString(string(doc)))
	return Generated{Key: Key(req), RequestJSON: doc, Expr: expr}, nil
}

// UnknownBackendError is returned for a --backend that does not exist.
type UnknownBackendError struct{ Name string }

func (e *UnknownBackendError) Error() string { return fmt.Sprintf("unknown backend %q", e.Name) }
func (e *UnknownBackendError) Hint() string {
	return "choose one of: " + strings.Join(Backends, ", ")
}

// NamesExpr is the expression that lists the attribute names beside each
// missing package path (templates/names.nix), for suggestions.
func NamesExpr(req Request, missing [][]string) string {
	doc, _ := json.Marshal(struct {
		Schema  int        `json:"schema"`
		Nixpkgs string     `json:"nixpkgs"`
		System  string     `json:"system"`
		Missing [][]string `json:"missing"`
	}{SchemaVersion, req.Nixpkgs.Path, req.System, missing})
	return fmt.Sprintf("import (/. + %s) (builtins.fromJSON %s)\n",
		nixString(filepath.Join(req.TemplatesDir, "names.nix")), nixString(string(doc)))
}
