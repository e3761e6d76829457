package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// TestWarmCacheServesAnEmptyStore runs the README's cache-warming recipe:
// its CI step (`build --all --with … --push URL --secret-key FILE`, the
// README's very flags, with a file:// cache and a key made here), then its
// consumer nix.conf lines in a second, empty store (its own /nix and
// daemon, this pass's Nix), where `claude-sandbox build` of the same
// configuration must fetch every path and build nothing, with signatures
// required.
func TestWarmCacheServesAnEmptyStore(t *testing.T) {
	requireSandboxHost(t)
	testenv.RequireProgram(t, "nix")
	testenv.RequireRoot(t) // the second store is mounted in a namespace of its own
	step, confLines := readmeCacheRecipe(t)

	keys := t.TempDir()
	secret, public := filepath.Join(keys, "cache-key.sec"), filepath.Join(keys, "cache-key.pub")
	if out, err := exec.Command("nix-store", "--generate-binary-cache-key", "csb-test-cache-1", secret, public).CombinedOutput(); err != nil {
		t.Fatalf("nix-store --generate-binary-cache-key: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(public)
	if err != nil {
		t.Fatal(err)
	}
	publicKey := strings.TrimSpace(string(pub))
	cache := t.TempDir()
	os.Chmod(cache, 0o755)
	cacheURL := "file://" + cache

	// The CI step, with the README's flags; only the cache and the key differ.
	var args []string
	for i := 0; i < len(step); i++ {
		args = append(args, step[i])
		switch step[i] {
		case "--push":
			args = append(args, cacheURL)
			i++
		case "--secret-key":
			args = append(args, secret)
			i++
		}
	}
	push := run(t, runOpts{dirs: freshDirs(t)}, append(args, "--json")...)
	if push.code != 0 {
		t.Fatalf("claude-sandbox %s: %s", strings.Join(args, " "), push)
	}
	var pushed struct {
		Closures []struct {
			Backend string `json:"backend"`
			Network bool   `json:"network"`
			OutPath string `json:"outPath"`
		} `json:"closures"`
		Push struct {
			Compression string `json:"compression"`
			PublicKey   string `json:"publicKey"`
			Signed      bool   `json:"signed"`
			Closures    int    `json:"closures"`
			Paths       int    `json:"paths"`
			Pushed      int    `json:"pushed"`
		} `json:"push"`
	}
	if err := json.Unmarshal([]byte(push.stdout), &pushed); err != nil {
		t.Fatalf("build --push --json printed %q: %v", push.stdout, err)
	}
	var outPaths []string
	for _, c := range pushed.Closures {
		outPaths = append(outPaths, c.OutPath)
	}
	closure := requisites(t, exec.CommandContext, outPaths...)
	p := pushed.Push
	if !p.Signed || p.PublicKey != publicKey || p.Compression != "zstd" || p.Closures != len(outPaths) || p.Paths != len(closure) || p.Pushed != len(closure) {
		t.Errorf("push summary %+v; want signed by %s, zstd, %d closures, their %d paths each pushed once", p, publicKey, len(outPaths), len(closure))
	}
	if !strings.Contains(push.stderr, "extra-trusted-public-keys = "+publicKey) {
		t.Errorf("the push does not print the consumers' extra-trusted-public-keys line:\n%s", push.stderr)
	}

	// The consumer: the README's nix.conf lines, the cache its only substituter.
	var conf []string
	for _, line := range confLines {
		name, _, _ := strings.Cut(line, " = ")
		switch name {
		case "extra-substituters":
			conf = append(conf, name+" = "+cacheURL)
		case "extra-trusted-public-keys":
			conf = append(conf, name+" = "+publicKey)
		default:
			t.Fatalf("the README's consumer line %q: the test does not know it", line)
		}
	}
	conf = append(conf, "require-sigs = true") // Nix's default, said out loud
	// The same configuration: the CI step's build flags, without the push.
	var build []string
	for i := 0; i < len(step); i++ {
		if step[i] == "--push" || step[i] == "--secret-key" {
			i++
			continue
		}
		build = append(build, step[i])
	}

	// The consumer's Nix: this pass's; and where the second Nix is another
	// version (the first pass), that one too: CI and its consumers need
	// not run the same Nix.
	thisNix, err := exec.Command("nix-store", "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []testenv.NixRootOptions{{ThisNix: true, Conf: conf}, {Conf: conf}} {
		name := "this Nix"
		if !o.ThisNix {
			name = "the second Nix"
		}
		t.Run(name, func(t *testing.T) {
			consumer := testenv.StartNixRoot(t, o)
			if !o.ThisNix && strings.HasSuffix(strings.TrimSpace(string(thisNix)), " "+consumer.Version) {
				t.Skipf("the second Nix is this pass's Nix (%s), tried above", consumer.Version)
			}
			warmedStoreFetches(t, consumer, build, outPaths, closure)
		})
	}
}

// warmedStoreFetches runs build (the recipe's configuration) in the
// consumer's empty store and checks it fetched the pushed closures and
// built nothing.
func warmedStoreFetches(t *testing.T, consumer *testenv.NixRoot, build, outPaths []string, closure map[string]bool) {
	t.Logf("consumer: an empty store of Nix %s at %s", consumer.Version, consumer.Dir)
	if got := requisitesValid(t, consumer, outPaths...); len(got) != 0 {
		t.Fatalf("the consumer's store is not empty: %v", got)
	}

	fetch := run(t, runOpts{dirs: freshDirs(t), command: consumer.Command}, append(build, "--json", "--log-format", "json")...)
	if fetch.code != 0 {
		t.Fatalf("claude-sandbox %s in the consumer's store: %s", strings.Join(build, " "), fetch)
	}
	var results []struct {
		OutPath string `json:"outPath"`
	}
	if err := json.Unmarshal([]byte(fetch.stdout), &results); err != nil || len(results) != len(outPaths) {
		t.Fatalf("build --json in the consumer printed %q: %v", fetch.stdout, err)
	}
	for i, r := range results {
		if r.OutPath != outPaths[i] {
			t.Errorf("the consumer's closure %d is %s, the pushed one %s", i, r.OutPath, outPaths[i])
		}
	}

	// The plan of every closure: paths to fetch, no derivation to build;
	// and no build started.
	willFetch := map[string]bool{}
	plans := 0
	scanner := bufio.NewScanner(strings.NewReader(fetch.stderr))
	scanner.Buffer(make([]byte, 64<<10), 4<<20)
	for scanner.Scan() {
		var ev struct {
			Event     string   `json:"event"`
			Name      string   `json:"name"`
			WillBuild []string `json:"willBuild"`
			WillFetch []string `json:"willFetch"`
		}
		if json.Unmarshal(scanner.Bytes(), &ev) != nil {
			continue
		}
		switch ev.Event {
		case "plan":
			plans++
			if len(ev.WillBuild) != 0 {
				t.Errorf("the consumer plans to build %d derivations: %v", len(ev.WillBuild), ev.WillBuild)
			}
			for _, p := range ev.WillFetch {
				willFetch[p] = true
			}
		case "build-start":
			t.Errorf("the consumer built %s", ev.Name)
		}
	}
	if plans != len(outPaths) {
		t.Errorf("%d plans for %d closures:\n%s", plans, len(outPaths), fetch.stderr)
	}
	for _, out := range outPaths {
		if !willFetch[out] {
			t.Errorf("%s is not among the paths the consumer planned to fetch", out)
		}
	}
	for p := range willFetch {
		if !closure[p] {
			t.Errorf("the consumer planned to fetch %s, which was not pushed", p)
		}
	}
	// Everything is there now: the closures are whole in the consumer's store.
	have := requisitesValid(t, consumer, outPaths...)
	var lacking []string
	for p := range closure {
		if !have[p] {
			lacking = append(lacking, p)
		}
	}
	if len(lacking) > 0 || len(have) != len(closure) {
		sort.Strings(lacking)
		t.Errorf("the consumer's store holds %d paths of the closures, %d pushed; lacking %v", len(have), len(closure), lacking)
	}
	t.Logf("the consumer fetched %d paths (of %d pushed) and built nothing", len(willFetch), len(closure))
}

// readmeCacheRecipe returns the README's CI step (the arguments after
// `nix run … --`) and its consumer nix.conf lines.
func readmeCacheRecipe(t *testing.T) (step, conf []string) {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if _, cmd, ok := strings.Cut(line, "nix run github:OWNER/claude-sandbox -- build "); ok {
			step = append([]string{"build"}, shellFields(cmd)...)
		}
		if strings.HasPrefix(line, "extra-substituters = ") || strings.HasPrefix(line, "extra-trusted-public-keys = ") {
			conf = append(conf, line)
		}
	}
	if step == nil || len(conf) != 2 || !contains(step, "--push") || !contains(step, "--secret-key") || !contains(step, "--all") {
		t.Fatalf("the README's cache recipe is not there as this test knows it (a build --all --push --secret-key step, two nix.conf lines): %q %q", step, conf)
	}
	return step, conf
}

// shellFields splits a command line of plain words and double-quoted ones.
func shellFields(s string) []string {
	var fields []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if rest, ok := strings.CutPrefix(s, `"`); ok {
			word, after, _ := strings.Cut(rest, `"`)
			fields, s = append(fields, word), after
			continue
		}
		word, after, _ := strings.Cut(s, " ")
		fields, s = append(fields, word), after
	}
	return fields
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// requisites is the set of paths the out paths need, as the store that
// command reaches says.
func requisites(t *testing.T, command func(context.Context, string, ...string) *exec.Cmd, outPaths ...string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := command(ctx, "nix-store", append([]string{"--query", "--requisites"}, outPaths...)...).Output()
	if err != nil {
		t.Fatalf("nix-store --query --requisites: %v", err)
	}
	set := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		set[p] = true
	}
	return set
}

// requisitesValid is the set of the out paths' closure that is valid in
// the consumer's store: empty while they are not there.
func requisitesValid(t *testing.T, r *testenv.NixRoot, outPaths ...string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	valid := map[string]bool{}
	for _, out := range outPaths {
		cmd := r.Command(ctx, "nix-store", "--query", "--requisites", out)
		got, err := cmd.Output()
		if err != nil {
			continue // not valid there
		}
		for _, p := range strings.Fields(string(got)) {
			valid[p] = true
		}
	}
	return valid
}
