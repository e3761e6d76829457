package tests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// completion is what the shell scripts get from `claude-sandbox __complete`.
type completion struct {
	candidates []string // without descriptions
	directive  int
	raw        string
}

// complete runs the hidden completion command the bash, zsh and fish
// scripts call, in dir (the shell's working directory).
func complete(t testing.TB, o runOpts, dir string, args ...string) completion {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"__complete"}, args...)...)
	cmd.Env = completionEnv(o)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("__complete %q: %v\n%s%s", args, err, stdout.String(), stderr.String())
	}
	c := completion{raw: stdout.String()}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if d, ok := strings.CutPrefix(line, ":"); ok {
			c.directive, _ = strconv.Atoi(d)
			continue
		}
		if name, _, _ := strings.Cut(line, "\t"); name != "" {
			c.candidates = append(c.candidates, name)
		}
	}
	return c
}

func completionEnv(o runOpts) []string {
	if o.dirs == (cacheDirs{}) {
		o.dirs = sharedDirs()
	}
	path := o.path
	if path == "" {
		path = os.Getenv("PATH")
	}
	return append([]string{"PATH=" + path, "HOME=" + os.Getenv("HOME"), "USER=" + os.Getenv("USER"),
		"XDG_CACHE_HOME=" + o.dirs.cache, "XDG_STATE_HOME=" + o.dirs.state,
		"CLAUDE_SANDBOX_NIXPKGS=" + fixture}, o.env...)
}

const noFileComp = 4 // cobra.ShellCompDirectiveNoFileComp

// TestCompleteWithPackageNames: --with completes nixpkgs attribute names,
// computed once per nixpkgs and then read from the cache without Nix.
func TestCompleteWithPackageNames(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{dirs: freshDirs(t), env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "")}}
	here := t.TempDir()

	first := complete(t, o, here, "--with", "pyth")
	for _, want := range []string{"python3", "python3Packages", "python311"} {
		if !slices.Contains(first.candidates, want) {
			t.Errorf("--with pyth: %q missing from %v", want, first.candidates)
		}
	}
	for _, c := range first.candidates {
		if !strings.HasPrefix(c, "pyth") {
			t.Errorf("--with pyth offered %q", c)
		}
	}
	if first.directive != noFileComp {
		t.Errorf("directive %d, want %d (no file names)", first.directive, noFileComp)
	}
	lists, _ := filepath.Glob(filepath.Join(o.dirs.cache, "claude-sandbox", "names", "*.txt"))
	if len(lists) != 1 {
		t.Fatalf("want one cached name list, got %v", lists)
	}

	// Inside a set, and after a comma.
	if c := complete(t, o, here, "--with", "python3Packages.p"); !slices.Contains(c.candidates, "python3Packages.pip") {
		t.Errorf("--with python3Packages.p: %v", c.candidates)
	}
	if c := complete(t, o, here, "exec", "--with", "jq,ripg"); !slices.Equal(c.candidates, []string{"jq,ripgrep"}) {
		t.Errorf("exec --with jq,ripg: %v", c.candidates)
	}

	// The cached path runs no Nix: with no Nix on PATH the answer is the same.
	noNix := o
	noNix.path = t.TempDir()
	again := complete(t, noNix, here, "--with", "pyth")
	if !slices.Equal(again.candidates, first.candidates) {
		t.Errorf("cached completion without Nix on PATH: %v, want %v", again.candidates, first.candidates)
	}
	if c := complete(t, noNix, here, "--with", "python3Packages.p"); !slices.Contains(c.candidates, "python3Packages.pip") {
		t.Errorf("cached nested completion without Nix: %v", c.candidates)
	}
	// A name --with refuses is not completed (and runs nothing).
	if c := complete(t, noNix, here, "--with", "${x}."); len(c.candidates) != 0 {
		t.Errorf("--with ${x}.: %v", c.candidates)
	}
}

// TestCompleteUntrustedNixpkgsIsNotEvaluated: completing inside a project
// whose untrusted file names another nixpkgs lists the user's nixpkgs;
// once trusted, the project's.
func TestCompleteUntrustedNixpkgsIsNotEvaluated(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	evil := filepath.Join(p, "evilpkgs")
	writeFile(t, filepath.Join(evil, "default.nix"),
		"args: (import "+fixture+" args) // { csbEvilPackage = (import "+fixture+" args).jq; }\n")
	writeFile(t, filepath.Join(p, "claude-sandbox.toml"), "nixpkgs = \"./evilpkgs\"\n")
	o := runOpts{dirs: freshDirs(t), env: []string{
		"XDG_CONFIG_HOME=" + cfgHome(t, "nixpkgs = \""+fixture+"\"\n"),
		"CLAUDE_SANDBOX_NIXPKGS=",
	}}
	if c := complete(t, o, p, "--with", "csbEvil"); len(c.candidates) != 0 {
		t.Fatalf("the untrusted project's nixpkgs was evaluated: %v", c.candidates)
	}
	if c := complete(t, o, p, "--with", "pyth"); !slices.Contains(c.candidates, "python3") {
		t.Fatalf("the user's nixpkgs was not used: %v", c.candidates)
	}
	if r := run(t, o, "trust", p); r.code != 0 {
		t.Fatalf("trust: %s", r)
	}
	if c := complete(t, o, p, "--with", "csbEvil"); !slices.Equal(c.candidates, []string{"csbEvilPackage"}) {
		t.Fatalf("the trusted project's nixpkgs: %v", c.candidates)
	}
	// Naming the project on the command line counts like the working directory.
	if c := complete(t, o, t.TempDir(), "exec", p, "--with", "csbEvil"); !slices.Equal(c.candidates, []string{"csbEvilPackage"}) {
		t.Fatalf("exec PROJECT --with: %v", c.candidates)
	}
}

// TestCompleteArgumentsAndFlags: --backend, project directories, and the
// running projects for enter and stop; the shell scripts themselves.
func TestCompleteArgumentsAndFlags(t *testing.T) {
	requireSandboxHost(t)
	o := runOpts{env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "")}}
	here := t.TempDir()
	os.Mkdir(filepath.Join(here, "myproject"), 0o755)
	os.WriteFile(filepath.Join(here, "notes.txt"), nil, 0o644)

	if c := complete(t, o, here, "--backend", ""); !slices.Equal(c.candidates, []string{"bubblewrap", "container", "vm"}) {
		t.Errorf("--backend: %v", c.candidates)
	}
	if c := complete(t, o, here, "exec", "--backend", "c"); !slices.Equal(c.candidates, []string{"container"}) {
		t.Errorf("exec --backend c: %v", c.candidates)
	}
	if c := complete(t, o, here, "exec", "my"); !slices.Equal(c.candidates, []string{"myproject/"}) {
		t.Errorf("exec my: %v (directories only)", c.candidates)
	}
	if c := complete(t, o, here, "m"); !slices.Contains(c.candidates, "man") && !slices.Contains(c.candidates, "myproject/") {
		t.Errorf("PROJECT or a command: %v", c.candidates)
	}
	if c := complete(t, o, here, "doc"); !slices.Equal(c.candidates, []string{"doctor"}) {
		t.Errorf("doc: %v", c.candidates)
	}

	// enter and stop complete the projects that have a running sandbox.
	p := project(t)
	if c := complete(t, o, here, "enter", ""); slices.Contains(c.candidates, p) {
		t.Fatalf("enter offers %s before it runs", p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bg := exec.CommandContext(ctx, binary, "exec", p, "--", "sleep", "120")
	bg.Env = completionEnv(o)
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	defer bg.Wait()
	var got completion
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got = complete(t, o, here, "stop", ""); slices.Contains(got.candidates, p) {
			break
		}
	}
	if !slices.Contains(got.candidates, p) {
		t.Fatalf("stop: running project %s not offered: %q", p, got.raw)
	}
	if !strings.Contains(got.raw, p+"\tbubblewrap, pid ") {
		t.Errorf("no description for the running project: %q", got.raw)
	}
	if c := complete(t, o, filepath.Dir(p), "enter", ""); !slices.Contains(c.candidates, filepath.Base(p)) {
		t.Errorf("enter, from the project's parent: %v", c.candidates)
	}
	if r := run(t, o, "stop", p); r.code != 0 {
		t.Errorf("stop: %s", r)
	}

	for shell, want := range map[string]string{"bash": "__start_claude-sandbox", "zsh": "#compdef claude-sandbox", "fish": "complete -c claude-sandbox"} {
		r := run(t, o, "completion", shell)
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("completion %s: exit %d, %q missing", shell, r.code, want)
		}
	}
}

// BenchmarkCompletion times, side by side, the cached `--with` completion
// (what a TAB costs after the first one), `claude-sandbox version` (the
// process start alone), and the first completion (one evaluation of the
// package set, the fixture here: real nixpkgs takes seconds).
//
//	go test ./tests -run '^$' -bench Completion -benchtime 30x
func BenchmarkCompletion(b *testing.B) {
	requireSandboxHost(b)
	home, _ := os.MkdirTemp(workDir, "config-")
	defer os.RemoveAll(home)
	timeIt := func(o runOpts, args ...string) time.Duration {
		cmd := exec.Command(binary, args...)
		cmd.Env = append(completionEnv(o), "XDG_CONFIG_HOME="+home)
		cmd.Dir = workDir
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", args, err, out)
		}
		return time.Since(start)
	}
	fresh := cacheDirs{filepath.Join(workDir, "bench-names", "cache"), filepath.Join(workDir, "bench-names", "state")}
	defer os.RemoveAll(filepath.Join(workDir, "bench-names"))
	// Real nixpkgs has some 20,000 top-level names, the fixture a hundred:
	// a package set with 25,000 more shows the cost of reading a list that size.
	big := filepath.Join(workDir, "bench-names", "big-nixpkgs")
	writeFile(b, filepath.Join(big, "default.nix"), "args: (import "+fixture+" args) // builtins.listToAttrs "+
		"(builtins.genList (i: { name = \"csbpkg${toString i}\"; value = i; }) 25000)\n")
	first := timeIt(runOpts{dirs: fresh}, "__complete", "--with", "pyth")
	timeIt(runOpts{dirs: fresh}, "__complete", "--nixpkgs", big, "--with", "pyth")
	timeIt(runOpts{dirs: fresh}, "version")
	var cached, cachedBig, version time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cached += timeIt(runOpts{dirs: fresh}, "__complete", "--with", "pyth")
		cachedBig += timeIt(runOpts{dirs: fresh}, "__complete", "--nixpkgs", big, "--with", "pyth")
		version += timeIt(runOpts{dirs: fresh}, "version")
	}
	b.StopTimer()
	b.ReportMetric(ms(cached, b.N), "cached-complete-ms")
	b.ReportMetric(ms(cachedBig, b.N), "cached-complete-25k-names-ms")
	b.ReportMetric(ms(version, b.N), "version-ms")
	b.ReportMetric(ms(first, 1), "first-complete-ms")
	b.ReportMetric(ms(cachedBig, b.N)/ms(version, b.N), "cached-25k/version")
	b.ReportMetric(0, "ns/op")
}
