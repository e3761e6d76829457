package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// The Nix front door (flake.nix, nix/), against the offline fixture standing
// in for the flake's nixpkgs input (--override-input nixpkgs path:…): the
// flake evaluates, `nix run` runs, the backend packages build and run real
// sandboxes from their prebuilt closures, the binary carries the pinned
// nixpkgs, and the NixOS module builds a system whose entry commands work.

var updateVendorHash = flag.Bool("update-vendor-hash", false, "rewrite vendorHash in nix/package.nix to what go.mod/go.sum vendor to")

// fixtureGoModCache is where the fixture's buildGoModule vendors from
// (tests/fixtures/nixpkgs/pkgs/flake-support.nix).
const fixtureGoModCache = "/opt/claude-sandbox-ci/gomodcache"

const flakeSystem = "x86_64-linux"

type flakeHost struct {
	repo         string // the source tree, as a flake: path:<repo>
	fixtureStore string // the fixture as the flake's nixpkgs input: its store path
	env          []string
}

var (
	flakeOnce sync.Once
	flakeErr  error
	flake     flakeHost
)

// requireFlakeHost checks what every flake test needs and prepares, once, the
// module cache the fixture vendors Go modules from.
func requireFlakeHost(t *testing.T) *flakeHost {
	t.Helper()
	requireSandboxHost(t)
	testenv.RequireProgram(t, "nix")
	testenv.RequireProgram(t, "go")
	flakeOnce.Do(func() { flakeErr = setupFlakeHost() })
	if flakeErr != nil {
		t.Fatal(flakeErr)
	}
	return &flake
}

func setupFlakeHost() error {
	repo, err := filepath.Abs("..")
	if err != nil {
		return err
	}
	flake.repo = repo
	flake.env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "USER=" + os.Getenv("USER"),
		// Nix's own fetcher and evaluation caches, private to this run.
		"XDG_CACHE_HOME=" + filepath.Join(workDir, "nix-cache"),
	}
	// Root fills the module cache (from its own, or the module proxy);
	// the unprivileged pass finds it, or the vendored modules already in
	// the store, which the fixed-output derivation reuses by hash.
	if os.Geteuid() == 0 {
		gomodcache, _ := exec.Command("go", "env", "GOMODCACHE").Output()
		cmd := exec.Command("go", "mod", "download")
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GOMODCACHE="+fixtureGoModCache, "GOFLAGS=-mod=mod",
			"GOPROXY=file://"+strings.TrimSpace(string(gomodcache))+"/cache/download,https://proxy.golang.org")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("filling %s: %v\n%s", fixtureGoModCache, err, out)
		}
	}
	var meta struct{ Path string }
	r := nixRun(context.Background(), "flake", "metadata", "--json", "path:"+fixture)
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &meta) != nil || meta.Path == "" {
		return fmt.Errorf("nix flake metadata of the fixture: %s", r)
	}
	flake.fixtureStore = meta.Path
	return nil
}

// nixRun runs the nix CLI with flakes enabled.
func nixRun(ctx context.Context, args ...string) result {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	args = append([]string{"--extra-experimental-features", "nix-command flakes"}, args...)
	cmd := exec.CommandContext(ctx, "nix", args...)
	cmd.Env = flake.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		stderr.WriteString(err.Error())
	}
	return result{code, stdout.String(), stderr.String()}
}

// ref is an installable of this repository's flake.
func (h *flakeHost) ref(attr string) string {
	if attr == "" {
		return "path:" + h.repo
	}
	return "path:" + h.repo + "#" + attr
}

func (h *flakeHost) override() []string {
	return []string{"--override-input", "nixpkgs", "path:" + fixture}
}

// build builds installables of the flake and returns their out paths, in
// order. One nix call each: `nix build --json` lists several results in an
// order of its own, and two of these packages share a name.
func (h *flakeHost) build(t *testing.T, attrs ...string) []string {
	t.Helper()
	var outs []string
	for _, a := range attrs {
		args := append([]string{"build", "--json", "--no-link"}, h.override()...)
		r := nixRun(context.Background(), append(args, h.ref(a))...)
		if r.code != 0 {
			t.Fatalf("nix build %s: %s", a, r)
		}
		var built []struct {
			Outputs map[string]string `json:"outputs"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &built); err != nil || len(built) != 1 {
			t.Fatalf("nix build --json %s printed %q: %v", a, r.stdout, err)
		}
		outs = append(outs, built[0].Outputs["out"])
	}
	return outs
}

// runEntry runs an entry command of a package with fresh cache and state
// directories and a minimal environment, as a user's shell would.
func runEntry(t *testing.T, program string, args ...string) (result, cacheDirs) {
	t.Helper()
	dirs := freshDirs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, program, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "USER=" + os.Getenv("USER"),
		"XDG_CACHE_HOME=" + dirs.cache, "XDG_STATE_HOME=" + dirs.state, "TERM=dumb"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %s: %v", program, err)
	}
	return result{code, stdout.String(), stderr.String()}, dirs
}

// evaluatedNothing checks that a launch found its closure prebuilt: no
// cache entry, so no evaluation and no build happened.
func evaluatedNothing(t *testing.T, dirs cacheDirs, r result) {
	t.Helper()
	entries, _ := filepath.Glob(filepath.Join(dirs.cache, "claude-sandbox", "index", "*"))
	if len(entries) > 0 || strings.Contains(r.stderr, "building the") {
		t.Errorf("the launch built its closure instead of using the prebuilt one (index %v): %s", entries, r)
	}
}

// interfaces lists the network interfaces a sandbox sees.
func interfaces(procNetDev string) []string {
	var names []string
	for _, line := range strings.Split(procNetDev, "\n") {
		if name, _, ok := strings.Cut(line, ":"); ok && !strings.Contains(name, "|") {
			names = append(names, strings.TrimSpace(name))
		}
	}
	return names
}

func prebuiltOf(t *testing.T, wrapper string) []map[string]any {
	t.Helper()
	script, err := os.ReadFile(wrapper)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`--prebuilt '?(/nix/store/[^ ']+)`).FindSubmatch(script)
	if m == nil {
		t.Fatalf("%s passes no --prebuilt:\n%s", wrapper, script)
	}
	var file struct {
		Closures []map[string]any `json:"closures"`
	}
	data, _ := os.ReadFile(string(m[1]))
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatalf("%s: %v", m[1], err)
	}
	return file.Closures
}

func manifestBackend(t *testing.T, closure string) string {
	t.Helper()
	var m struct{ Backend string }
	data, err := os.ReadFile(filepath.Join(closure, "share/claude-sandbox/manifest.json"))
	if err != nil || json.Unmarshal(data, &m) != nil {
		t.Fatalf("closure %s has no readable manifest: %v", closure, err)
	}
	return m.Backend
}

// The vendorHash in nix/package.nix is what go.mod and go.sum vendor to,
// computed as buildGoModule's goModules derivation does: `go mod vendor`,
// then the NAR hash of the directory.
func TestFlakeVendorHash(t *testing.T) {
	testenv.RequireProgram(t, "nix")
	testenv.RequireProgram(t, "go")
	vendor := filepath.Join(t.TempDir(), "vendor")
	cmd := exec.Command("go", "mod", "vendor", "-o", vendor)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "hash", "path", vendor).Output()
	if err != nil {
		t.Fatalf("nix hash path: %v", err)
	}
	want := strings.TrimSpace(string(out))
	pkgFile := filepath.Join("..", "nix", "package.nix")
	src, err := os.ReadFile(pkgFile)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`vendorHash = "([^"]*)";`)
	m := re.FindSubmatch(src)
	if m == nil {
		t.Fatalf("%s has no vendorHash line", pkgFile)
	}
	if string(m[1]) == want {
		return
	}
	if *updateVendorHash {
		updated := re.ReplaceAll(src, []byte(`vendorHash = "`+want+`";`))
		if err := os.WriteFile(pkgFile, updated, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("vendorHash updated to %s", want)
		return
	}
	t.Fatalf("nix/package.nix has vendorHash %s, but go.mod/go.sum vendor to %s\n"+
		"  update it: go test ./tests -run TestFlakeVendorHash -update-vendor-hash", m[1], want)
}

func TestFlake(t *testing.T) {
	h := requireFlakeHost(t)
	packages := []string{"default", "sandbox", "no-network", "container", "container-no-network", "vm", "vm-no-network"}

	t.Run("show", func(t *testing.T) {
		r := nixRun(context.Background(), append([]string{"flake", "show", "--json"}, append(h.override(), h.ref(""))...)...)
		if r.code != 0 {
			t.Fatalf("nix flake show: %s", r)
		}
		var show map[string]map[string]map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &show); err != nil {
			t.Fatalf("nix flake show --json: %v\n%s", err, r.stdout)
		}
		// aarch64-linux is left out until the vm backend boots there (see flake.nix).
		if _, ok := show["packages"]["aarch64-linux"]; ok {
			t.Errorf("the flake offers aarch64-linux packages, whose vm backend cannot boot")
		}
		for _, system := range []string{"x86_64-linux"} {
			for _, p := range packages {
				if show["packages"][system][p] == nil {
					t.Errorf("packages.%s.%s missing", system, p)
				}
			}
			for _, c := range []string{"templates", "go-tests", "nixos-module"} {
				if show["checks"][system][c] == nil {
					t.Errorf("checks.%s.%s missing", system, c)
				}
			}
			if show["apps"][system]["default"] == nil || show["devShells"][system]["default"] == nil {
				t.Errorf("apps or devShells for %s missing: %s", system, r.stdout)
			}
		}
		if _, ok := show["nixosModules"]["default"]; !ok {
			t.Errorf("nixosModules.default missing: %s", r.stdout)
		}
	})

	t.Run("nix run -- --help", func(t *testing.T) {
		r := nixRun(context.Background(), append(append([]string{"run"}, h.override()...), h.ref(""), "--", "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage:") || !strings.Contains(r.stdout, "claude-sandbox [flags] [PROJECT]") {
			t.Fatalf("nix run . -- --help: %s", r)
		}
	})

	outs := h.build(t, "default", "sandbox", "no-network", "container")
	bin, sandbox, noNetwork, container := outs[0], outs[1], outs[2], outs[3]
	cs := filepath.Join(bin, "bin", "claude-sandbox")

	t.Run("the binary has the flake's nixpkgs compiled in", func(t *testing.T) {
		r, _ := runEntry(t, cs, "version", "--json")
		var v struct {
			Version, CompiledNixpkgs string
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil {
			t.Fatalf("version --json: %s", r)
		}
		if v.CompiledNixpkgs != h.fixtureStore {
			t.Errorf("compiled-in nixpkgs %q, the flake's input is %q", v.CompiledNixpkgs, h.fixtureStore)
		}
		// And a build with no --nixpkgs and no environment uses it.
		r, _ = runEntry(t, cs, "build", "--print-expr")
		if r.code != 0 || !strings.Contains(r.stdout, `\"nixpkgs\":\"`+h.fixtureStore+`\"`) {
			t.Errorf("build --print-expr does not import the compiled-in nixpkgs %s: %s", h.fixtureStore, r)
		}
	})

	t.Run("completions and man pages", func(t *testing.T) {
		for file, says := range map[string]string{
			"share/bash-completion/completions/claude-sandbox":    "__start_claude-sandbox",
			"share/zsh/site-functions/_claude-sandbox":            "#compdef claude-sandbox",
			"share/fish/vendor_completions.d/claude-sandbox.fish": "complete -c claude-sandbox",
			"share/man/man1/claude-sandbox.1":                     `.TH "CLAUDE-SANDBOX" "1"`,
			"share/man/man1/claude-sandbox-exec.1":                `.TH "CLAUDE-SANDBOX-EXEC" "1"`,
		} {
			data, err := os.ReadFile(filepath.Join(bin, file))
			if err != nil || !strings.Contains(string(data), says) {
				t.Errorf("%s: missing or does not say %q (%v)", file, says, err)
			}
		}
		// The original's entry names, read by the binary from argv[0].
		for _, name := range []string{"claude-sandbox-container", "claude-sandbox-vm"} {
			if target, err := os.Readlink(filepath.Join(bin, "bin", name)); err != nil || target != "claude-sandbox" {
				t.Errorf("bin/%s is not a link to claude-sandbox: %q %v", name, target, err)
			}
		}
		// bash really loads it and registers the completion.
		out, err := exec.Command("bash", "-c", "source "+filepath.Join(bin, "share/bash-completion/completions/claude-sandbox")+" && complete -p claude-sandbox").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "claude-sandbox") {
			t.Errorf("bash does not load the completion: %v %s", err, out)
		}
	})

	t.Run("sandbox runs a command from its prebuilt closure", func(t *testing.T) {
		p := project(t)
		r, dirs := runEntry(t, filepath.Join(sandbox, "bin/claude-sandbox"), "exec", p, "--",
			"sh", "-c", `echo "$CLAUDE_SANDBOX_BACKEND" > backend; cat /proc/net/dev`)
		if r.code != 0 {
			t.Fatalf("sandbox exec: %s", r)
		}
		if got, _ := os.ReadFile(filepath.Join(p, "backend")); string(got) != "bubblewrap\n" {
			t.Errorf("the command did not run in the bubblewrap sandbox: %q", got)
		}
		evaluatedNothing(t, dirs, r)
		// One source of truth: the binary, asked for the same configuration,
		// evaluates templates/ to the very closure the package prebuilt.
		pre := prebuiltOf(t, filepath.Join(sandbox, "bin/claude-sandbox"))
		b, _ := runEntry(t, cs, "build", "--json")
		var built struct{ OutPath string }
		if b.code != 0 || json.Unmarshal([]byte(b.stdout), &built) != nil {
			t.Fatalf("build --json: %s", b)
		}
		if len(pre) != 1 || pre[0]["path"] != built.OutPath {
			t.Errorf("the package's closure %v is not the one claude-sandbox builds, %s", pre, built.OutPath)
		}
	})

	t.Run("no-network has only loopback", func(t *testing.T) {
		p := project(t)
		r, dirs := runEntry(t, filepath.Join(noNetwork, "bin/claude-sandbox"), "exec", p, "--", "cat", "/proc/net/dev")
		if r.code != 0 {
			t.Fatalf("no-network exec: %s", r)
		}
		if got := interfaces(r.stdout); len(got) != 1 || got[0] != "lo" {
			t.Errorf("interfaces inside no-network: %v", got)
		}
		evaluatedNothing(t, dirs, r)
	})

	t.Run("container", func(t *testing.T) {
		entry := filepath.Join(container, "bin/claude-sandbox-container")
		pre := prebuiltOf(t, entry)
		if len(pre) != 1 || pre[0]["backend"] != "container" || manifestBackend(t, pre[0]["path"].(string)) != "container" {
			t.Fatalf("the container package's prebuilt closure: %v", pre)
		}
		testenv.RequireRoot(t)
		testenv.RequireProgram(t, "systemd-nspawn")
		p := project(t)
		r, dirs := runEntry(t, entry, "exec", p, "--", "sh", "-c", `echo "$CLAUDE_SANDBOX_BACKEND" > backend`)
		if got, _ := os.ReadFile(filepath.Join(p, "backend")); r.code != 0 || string(got) != "container\n" {
			t.Fatalf("container exec: %q %s", got, r)
		}
		evaluatedNothing(t, dirs, r)
	})

	// Built, not booted (a boot costs seconds under TCG): a launch through
	// the entry command differs from the binary's own only by --prebuilt,
	// which the bubblewrap and container packages exercise.
	t.Run("vm", func(t *testing.T) {
		outs := h.build(t, "vm", "vm-no-network")
		for i, network := range []bool{true, false} {
			pre := prebuiltOf(t, filepath.Join(outs[i], "bin/claude-sandbox-vm"))
			if len(pre) != 1 || pre[0]["backend"] != "vm" || pre[0]["network"] != network || manifestBackend(t, pre[0]["path"].(string)) != "vm" {
				t.Errorf("vm package (network %v) prebuilt closure: %v", network, pre)
			}
		}
	})
}

// checks.templates evaluates every template (each backend and network
// variant, a --with request, the module's value path) and fails if the
// NixOS module's closures drift from the ones the binary builds. It runs
// against a copy of the fixture with as many top-level names as nixpkgs
// has (~20,000, ~500 KB as JSON): the check lists them.
func TestFlakeTemplatesCheck(t *testing.T) {
	h := requireFlakeHost(t)
	large := fixtureCopy(t, func(root string) {
		replaceIn(t, filepath.Join(root, "pkgs/all-packages.nix"), "flakeSupport // trivial // {",
			`(builtins.listToAttrs (builtins.genList (i: { name = "padding-to-nixpkgs-size-${toString i}"; value = null; }) 20000))
  // flakeSupport // trivial // {`)
	})
	check := "checks." + flakeSystem + ".templates"
	// Without the evaluation cache: Nix 2.8 remembers a failed evaluation
	// of the same flake content and later reports the attribute as
	// "unexpectedly missing" (seen once in the unprivileged pass).
	r := nixRun(context.Background(), "build", "--json", "--no-link", "--option", "eval-cache", "false", "--override-input", "nixpkgs", "path:"+large, h.ref(check))
	var built []struct{ Outputs map[string]string }
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &built) != nil || len(built) != 1 {
		t.Fatalf("nix build %s: %s", check, r)
	}
	data, err := os.ReadFile(built[0].Outputs["out"])
	if err != nil || strings.Count(string(data), ".drv\n") < 8 || !strings.Contains(string(data), "padding-to-nixpkgs-size-19999") {
		t.Fatalf("checks.templates evaluated too little: %v\n%.2000s", err, data)
	}
}

// TestFlakeNixOSModule builds a NixOS system from the module, through the
// fixture's nixosSystem (its module system and eval-config), and runs the
// entry command it puts on PATH: the prebuilt sandbox carries a package
// *value*, the network preset holds, and nothing is evaluated at launch.
func TestFlakeNixOSModule(t *testing.T) {
	h := requireFlakeHost(t)
	dir := filepath.Join(t.TempDir(), "system")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The module is imported twice (as when another flake imports it too:
	// its key makes that one import) and with nixpkgs' hardened profile,
	// whose mkDefault on security.unprivilegedUsernsClone the module's own
	// definition must win over without a conflict.
	system := func(services, extra string) string {
		return fmt.Sprintf(`{
  inputs.nixpkgs.url = "path:%s";
  inputs.claude-sandbox.url = "path:%s";
  inputs.claude-sandbox.inputs.nixpkgs.follows = "nixpkgs";
  outputs = { nixpkgs, claude-sandbox, ... }: {
    nixosConfigurations.host = nixpkgs.lib.nixosSystem {
      modules = [
        claude-sandbox.nixosModules.default
        claude-sandbox.nixosModules.default
        ({ modulesPath, ... }: { imports = [ (modulesPath + "/profiles/hardened.nix") ]; })
        ({ pkgs, ... }: {
          nixpkgs.system = %q;
          # No kernel or initrd to build: the module does not touch booting.
          boot.isContainer = true;
          services.claude-sandbox = %s;
          %s
        })
      ];
    };
  };
}
`, fixture, h.repo, flakeSystem, services, extra)
	}
	write := func(services, extra string) {
		os.Remove(filepath.Join(dir, "flake.lock"))
		if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(system(services, extra)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	host := "path:" + dir + "#nixosConfigurations.host.config."
	toplevel := host + "system.build.toplevel"

	write(`{
            enable = true;
            container.enable = true;
            network = false;
            bubblewrap.extraPackages = [ pkgs.jq ];
            container.extraModules = [ { environment.etc."claude-sandbox-module-test".text = "from an extra module"; } ];
          }`, "")
	r := nixRun(context.Background(), "build", "--json", "--no-link", toplevel)
	if r.code != 0 {
		t.Fatalf("building the system: %s", r)
	}
	if u := nixRun(context.Background(), "eval", "--json", host+"security"); !strings.Contains(u.stdout, `"allowUserNamespaces":true`) ||
		!strings.Contains(u.stdout, `"unprivilegedUsernsClone":true`) {
		t.Errorf("with the hardened profile, user namespaces for bubblewrap: %s", u)
	}
	var built []struct{ Outputs map[string]string }
	if json.Unmarshal([]byte(r.stdout), &built) != nil || len(built) != 1 {
		t.Fatalf("nix build --json: %s", r)
	}
	sw := filepath.Join(built[0].Outputs["out"], "sw")

	p := project(t)
	run, dirs := runEntry(t, filepath.Join(sw, "bin/claude-sandbox"), "exec", p, "--",
		"sh", "-c", `echo '{"from":"a package value"}' | jq -r .from > out; cat /proc/net/dev`)
	if run.code != 0 {
		t.Fatalf("the system's claude-sandbox: %s", run)
	}
	if got, _ := os.ReadFile(filepath.Join(p, "out")); string(got) != "a package value\n" {
		t.Errorf("bubblewrap.extraPackages (jq) did not work inside: %q %s", got, run)
	}
	if got := interfaces(run.stdout); len(got) != 1 || got[0] != "lo" {
		t.Errorf("network = false, yet the sandbox sees %v", got)
	}
	evaluatedNothing(t, dirs, run)

	// The container entry lists both prebuilt closures, and the extra module
	// is in the container's system.
	pre := prebuiltOf(t, filepath.Join(sw, "bin/claude-sandbox-container"))
	var containerClosure string
	for _, c := range pre {
		if c["backend"] == "container" {
			containerClosure = c["path"].(string)
		}
	}
	if len(pre) != 2 || containerClosure == "" {
		t.Fatalf("prebuilt closures of the system: %v", pre)
	}
	var m struct{ Container struct{ Toplevel string } }
	data, _ := os.ReadFile(filepath.Join(containerClosure, "share/claude-sandbox/manifest.json"))
	json.Unmarshal(data, &m)
	if got, err := os.ReadFile(filepath.Join(m.Container.Toplevel, "etc/claude-sandbox-module-test")); err != nil || string(got) != "from an extra module" {
		t.Errorf("container.extraModules did not reach the container system %s: %q %v", m.Container.Toplevel, got, err)
	}

	// Values without a prebuilt closure cannot work: the module says so.
	write(`{ enable = true; prebuild = false; bubblewrap.extraPackages = [ pkgs.jq ]; }`, "")
	r = nixRun(context.Background(), "eval", "--raw", toplevel+".drvPath")
	if r.code == 0 || !strings.Contains(r.stderr, "only a prebuilt sandbox can carry") {
		t.Errorf("prebuild = false with extraPackages evaluated, or without the assertion's message: %s", r)
	}

	// A conflict with the module's own definitions names its file.
	write(`{ enable = true; }`, "security.allowUserNamespaces = false;")
	r = nixRun(context.Background(), "eval", "--json", host+"security.allowUserNamespaces")
	if r.code == 0 || !strings.Contains(r.stderr, "conflicting definition values") || !strings.Contains(r.stderr, "/nix/module.nix") {
		t.Errorf("a conflict with the module does not name nix/module.nix: %s", r)
	}
}
