package tests

import (
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// Secrets stay outside, probed from inside real sandboxes: a secret bound
// to one host (a TLS server this test starts on the host's loopback,
// named by address in an allow rule) arrives there with its real value,
// while the sandbox holds only a placeholder, which reaches any other
// host unchanged; the real value is nowhere inside; a secret whose source
// fails is unset, with a warning.

func TestSecretsBubblewrap(t *testing.T) {
	run, p := bubblewrapRunner(t)
	secretProbes(t, run, p)
}

func TestSecretsContainer(t *testing.T) {
	run, p := containerRunner(t)
	secretProbes(t, run, p)
}

// recordingTLS is a TLS server on the host's loopback that records the
// Authorization header of each request and answers with it.
type recordingTLS struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []string
}

func newRecordingTLS(t *testing.T) *recordingTLS {
	r := &recordingTLS{}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.seen = append(r.seen, req.Header.Get("Authorization"))
		r.mu.Unlock()
		io.WriteString(w, "GOT:"+req.Header.Get("Authorization"))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recordingTLS) addr() string { return strings.TrimPrefix(r.srv.URL, "https://") }

func (r *recordingTLS) received() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

// hostRoots writes the bundle the launcher's SSL_CERT_FILE names: the
// host's own roots and the test servers' certificate, which the
// supervisor verifies the bound host against and the sandbox's bundle
// carries for every other host.
func hostRoots(t testing.TB, srv *httptest.Server) string {
	t.Helper()
	system, _ := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	data := append(system, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})...)
	f := filepath.Join(workDir, fmt.Sprintf("roots-%s.pem", strings.ReplaceAll(t.Name(), "/", "-")))
	if err := os.WriteFile(f, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// realToken is the secret's value on the host: the probes look for it.
const realToken = "ghp_REALVALUEabcdefghijklmnopqrstuvwxyz01"

func secretProbes(t *testing.T, in inSandbox, p string) {
	bound, other := newRecordingTLS(t), newRecordingTLS(t)
	conf := fmt.Sprintf(`allow = [%q, %q]

[secrets.TEST_TOKEN]
env = "CSB_TEST_TOKEN"
hosts = [%q]

[secrets.BROKEN]
variable = "BROKEN_TOKEN"
command = ["false"]
hosts = [%q]
`, bound.addr(), other.addr(), bound.addr(), bound.addr())
	if err := os.WriteFile(filepath.Join(p, "claude-sandbox.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	o := runOpts{env: []string{"CSB_TEST_TOKEN=" + realToken, "SSL_CERT_FILE=" + hostRoots(t, bound.srv)}}

	// A project that adds a secret widens access: not without trust.
	if r := in(t, o, p, "true"); r.code != 79 || !strings.Contains(r.stderr, "secrets.TEST_TOKEN") {
		t.Fatalf("an untrusted project's secret: want exit 79 naming it: %s", r)
	}
	if r := run(t, o, "trust", p); r.code != 0 {
		t.Fatalf("trust: %s", r)
	}

	probe := `curl -sS -m 20 -H "Authorization: Bearer $TEST_TOKEN" https://` + bound.addr() + `/bound; echo
curl -sS -m 20 -H "Authorization: Bearer $TEST_TOKEN" https://` + other.addr() + `/other; echo
echo "PLACEHOLDER=$TEST_TOKEN"
echo "BROKEN=${BROKEN_TOKEN-unset}"
echo "ENV-HITS=$(env | grep -c REALVALUE)"
echo "PROC-HITS=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c REALVALUE)"
echo "FILE-HITS=$(grep -rsl REALVALUE "$HOME" /etc /run /tmp "$PWD" 2>/dev/null | wc -l)"
echo "CHROMIUM=$(ls /etc/chromium/policies/managed | tr '\n' ' ')"
python3 -c '
import base64, json, ssl, sys
pem = open(sys.argv[1]).read().split("-----BEGIN CERTIFICATE-----")[-1]
der = ssl.PEM_cert_to_DER_cert("-----BEGIN CERTIFICATE-----" + pem)
policy = json.load(open("/etc/chromium/policies/managed/claude-sandbox-ca.json"))
print("CHROMIUM-TRUSTS-CA" if base64.b64decode(policy["CACertificates"][0]) == der else "CHROMIUM-OTHER-CA")
' "$SSL_CERT_FILE"`
	r := in(t, o, p, probe)
	if r.code != 0 {
		t.Fatalf("probe: %s", r)
	}
	ph := ""
	for _, l := range strings.Split(r.stdout, "\n") {
		if v, ok := strings.CutPrefix(l, "PLACEHOLDER="); ok {
			ph = v
		}
	}
	if ph == "" || ph == realToken || !strings.HasPrefix(ph, "ghp_") || len(ph) != len(realToken) {
		t.Fatalf("TEST_TOKEN inside is %q, want a placeholder shaped like the value: %s", ph, r)
	}
	if got := bound.received(); len(got) != 1 || got[0] != "Bearer "+realToken {
		t.Errorf("the bound host received %q, want the real value", got)
	}
	if got := other.received(); len(got) != 1 || got[0] != "Bearer "+ph {
		t.Errorf("another allowed host received %q, want the placeholder unchanged", got)
	}
	for _, want := range []string{"GOT:Bearer " + ph, "BROKEN=unset", "ENV-HITS=0", "PROC-HITS=0", "FILE-HITS=0", "CHROMIUM-TRUSTS-CA"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("inside: missing %q: %s", want, r)
		}
	}
	if strings.Contains(r.stdout, realToken) {
		t.Errorf("the real value reached the sandbox: %s", r)
	}
	if !strings.Contains(r.stderr, "warning: secret BROKEN") || !strings.Contains(r.stderr, "BROKEN_TOKEN is not set") {
		t.Errorf("a failing source: want a warning naming the secret and its variable: %s", r)
	}

	// The session log names the substitution, never the value; --dry-run
	// shows no value either.
	substituted := false
	for _, e := range sessionLog(t, runOpts{env: o.env}, p) {
		substituted = substituted || e.Service == "secret" && e.Target == bound.addr()
	}
	if !substituted {
		t.Error("the session log has no substitution entry for the bound host")
	}
	logs, _ := os.ReadFile(filepath.Join(stateDir(sharedDirs(), p), "session.log"))
	if strings.Contains(string(logs), realToken) {
		t.Error("the session log holds the real value")
	}
	if d := in(t, o, p, "true", "--dry-run"); strings.Contains(d.stdout+d.stderr, realToken) {
		t.Errorf("--dry-run shows the real value: %s", d)
	}
}

// Nix's own secrets stay outside: an access-tokens line (and a netrc-file)
// in the host's /etc/nix/nix.conf is not readable inside. The host file is
// never changed: claude-sandbox runs in a private mount namespace in which
// a copy with those lines is bound over it (the Nix daemon, outside it,
// never sees the copy).
func TestNixSecretsStayOutsideBubblewrap(t *testing.T) {
	run, p := bubblewrapRunner(t)
	nixConfProbe(t, run, p, true)
}

func TestNixSecretsStayOutsideContainer(t *testing.T) {
	// The container's /etc/nix is its NixOS system's (the system's own
	// nix.conf where it configures Nix, else the sandbox's).
	run, p := containerRunner(t)
	nixConfProbe(t, run, p, false)
}

func nixConfProbe(t *testing.T, in inSandbox, p string, sandboxOwn bool) {
	testenv.RequireRoot(t) // a mount namespace of the host's, to replace /etc/nix/nix.conf in it only
	testenv.RequireProgram(t, "unshare")
	host, err := os.ReadFile("/etc/nix/nix.conf")
	testenv.Require(t, err == nil, "/etc/nix/nix.conf (the host's Nix configuration)")
	const token = "github.com=ghp_NIXTOKENabcdefghijklmnopqrstuvwxyz0"
	conf := filepath.Join(workDir, "nix.conf-"+strings.ReplaceAll(t.Name(), "/", "-"))
	data := append(append([]byte{}, host...), []byte("\naccess-tokens = "+token+"\nnetrc-file = /etc/nix/netrc\n")...)
	if err := os.WriteFile(conf, data, 0o644); err != nil {
		t.Fatal(err)
	}
	o := runOpts{wrap: []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
		`mount --bind "$0" /etc/nix/nix.conf && exec "$@"`, conf}}
	// The wrapper works: a host program in that namespace reads the token.
	if out, err := exec.Command(o.wrap[0], append(o.wrap[1:], "cat", "/etc/nix/nix.conf")...).CombinedOutput(); err != nil || !strings.Contains(string(out), token) {
		t.Fatalf("the private namespace does not show the copy: %v\n%s", err, out)
	}
	r := in(t, o, p, `cat /etc/nix/nix.conf; echo "HITS=$(grep -rsl NIXTOKEN /etc /nix/var/nix 2>/dev/null | wc -l)"; nix-store --version >/dev/null 2>&1; echo done`)
	if r.code != 0 || !strings.Contains(r.stdout, "done") {
		t.Fatalf("probe: %s", r)
	}
	if strings.Contains(r.stdout, "NIXTOKEN") || strings.Contains(r.stdout, "netrc-file") || !strings.Contains(r.stdout, "HITS=0") {
		t.Errorf("the host's Nix secrets are readable inside: %s", r)
	}
	if sandboxOwn && !strings.Contains(r.stdout, "claude-sandbox") {
		t.Errorf("the sandbox's nix.conf is not its own: %s", r)
	}
	if first, _, _ := strings.Cut(strings.TrimSpace(string(host)), "\n"); first != "" && strings.Contains(r.stdout, first) && !strings.Contains(first, "claude-sandbox") {
		t.Errorf("the host's nix.conf is visible inside: %s", r)
	}
	if after, _ := os.ReadFile("/etc/nix/nix.conf"); string(after) != string(host) {
		t.Fatal("the host's /etc/nix/nix.conf changed")
	}
}

// Claude Code starts and reaches its API host through the proxy with the
// placeholder: a stand-in of the API over TLS on the host's loopback, to
// which ANTHROPIC_API_KEY is bound, sees the real key; Claude Code inside
// holds only the placeholder and trusts the sandbox's CA (through
// NODE_EXTRA_CA_CERTS). The stand-in is reached by a name, as the real API
// is: Bun's TLS (BoringSSL) does not implement address name constraints,
// so a secret bound to an address does not work for Claude Code
// (docs/secrets.md). The name resolves to loopback through a copy of
// /etc/hosts bound over the host's in a private mount namespace.
func TestClaudeCodeWithAPIKeyPlaceholder(t *testing.T) {
	in, p := bubblewrapRunner(t)
	testenv.RequireRoot(t) // the private mount namespace for /etc/hosts
	testenv.RequireProgram(t, "unshare")
	const key = "sk-ant-api03-REALKEYabcdefghijklmnopqrstuvwxyz0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqr-stuvwxyzAA"
	var mu sync.Mutex
	var keys []string
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys = append(keys, r.Header.Get("X-Api-Key"))
		mu.Unlock()
		if r.Header.Get("X-Api-Key") != key {
			http.Error(w, `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}`, http.StatusUnauthorized)
			return
		}
		standInAPI().ServeHTTP(w, r)
	}))
	t.Cleanup(api.Close)
	addr := strings.TrimPrefix(api.URL, "https://")
	named := "example.com:" + port(addr) // the name the httptest certificate carries
	hosts, _ := os.ReadFile("/etc/hosts")
	hostsCopy := filepath.Join(workDir, "hosts-"+t.Name())
	os.WriteFile(hostsCopy, append(hosts, []byte("\n127.0.0.1 example.com\n")...), 0o644)
	conf := fmt.Sprintf("allow = [%q, %q]\n\n[secrets.ANTHROPIC_API_KEY]\nhosts = [%q]\n", named, addr, named)
	if err := os.WriteFile(filepath.Join(p, "claude-sandbox.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	o := runOpts{env: []string{"ANTHROPIC_API_KEY=" + key, "SSL_CERT_FILE=" + hostRoots(t, api),
		"ANTHROPIC_BASE_URL=https://" + named, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "DISABLE_AUTOUPDATER=1"},
		wrap: []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, hostsCopy}}
	if r := run(t, o, "trust", p); r.code != 0 {
		t.Fatalf("trust: %s", r)
	}
	r := in(t, o, p, `claude --version && claude -p ping --max-turns 1; echo "KEY-HITS=$(env | grep -c REALKEY)"`,
		"--env", "ANTHROPIC_BASE_URL", "--env", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "--env", "DISABLE_AUTOUPDATER")
	if r.code != 0 || !strings.Contains(r.stdout, "Claude Code") || !strings.Contains(r.stdout, "pong") || !strings.Contains(r.stdout, "KEY-HITS=0") {
		t.Fatalf("Claude Code with a placeholder API key: %s", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(keys) == 0 {
		t.Fatal("the stand-in API saw no request")
	}
	for _, k := range keys {
		if k != key {
			t.Errorf("the API host received %q, not the real key", k)
		}
	}
}

// Claude Code's login stays outside: with an OAuth login in ~/.claude
// (and no API key), the sandbox's ~/.claude/.credentials.json holds
// placeholders, Claude Code inside starts and reaches a stand-in of its
// API, which receives the host's access token; the host's file is left as
// it was.
func TestClaudeCodeLoginStaysOutside(t *testing.T) {
	in, p := bubblewrapRunner(t)
	testenv.RequireRoot(t) // the private mount namespace for /etc/hosts
	testenv.RequireProgram(t, "unshare")
	const access = "sk-ant-oat01-REALACCESSabcdefghijklmnopqrstuvwxyz0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstAA"
	const refresh = "sk-ant-ort01-REALREFRESHabcdefghijklmnopqrstuvwxyz0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrAA"
	var mu sync.Mutex
	var auths []string
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+access {
			http.Error(w, `{"type":"error","error":{"type":"authentication_error","message":"invalid token"}}`, http.StatusUnauthorized)
			return
		}
		standInAPI().ServeHTTP(w, r)
	}))
	t.Cleanup(api.Close)
	addr := strings.TrimPrefix(api.URL, "https://")
	named := "example.com:" + port(addr)
	hosts, _ := os.ReadFile("/etc/hosts")
	hostsCopy := filepath.Join(workDir, "hosts-"+t.Name())
	os.WriteFile(hostsCopy, append(hosts, []byte("\n127.0.0.1 example.com\n")...), 0o644)

	home := filepath.Join(dirOf(t, nil), "home")
	claudeDir := filepath.Join(home, ".claude")
	os.MkdirAll(claudeDir, 0o700)
	creds := fmt.Sprintf(`{"claudeAiOauth":{"accessToken":%q,"refreshToken":%q,"expiresAt":4102444800000,"scopes":["user:inference","user:profile"],"subscriptionType":"max"}}`, access, refresh)
	credPath := filepath.Join(claudeDir, ".credentials.json")
	if err := os.WriteFile(credPath, []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(home, ".claude.json"), []byte(`{"hasCompletedOnboarding":true}`), 0o600)

	// Where the API key goes, the login's access token goes too.
	conf := fmt.Sprintf("allow = [%q, %q]\n\n[secrets.ANTHROPIC_API_KEY]\nhosts = [%q]\n", named, addr, named)
	os.WriteFile(filepath.Join(p, "claude-sandbox.toml"), []byte(conf), 0o644)
	o := runOpts{env: []string{"HOME=" + home, "SSL_CERT_FILE=" + hostRoots(t, api),
		"ANTHROPIC_BASE_URL=https://" + named, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "DISABLE_AUTOUPDATER=1"},
		wrap: []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, hostsCopy}}
	if r := run(t, o, "trust", p); r.code != 0 {
		t.Fatalf("trust: %s", r)
	}
	r := in(t, o, p, `echo "CREDS-HITS=$(grep -c REAL ~/.claude/.credentials.json)"; echo "VIEW-HITS=$(grep -rsl REAL /run/claude-sandbox | wc -l)"; grep -q sk-ant-oat01- ~/.claude/.credentials.json && echo HAS-PLACEHOLDER
claude --version && claude -p ping --max-turns 1`,
		"--env", "ANTHROPIC_BASE_URL", "--env", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "--env", "DISABLE_AUTOUPDATER")
	if r.code != 0 || !strings.Contains(r.stdout, "CREDS-HITS=0") || !strings.Contains(r.stdout, "VIEW-HITS=0") || !strings.Contains(r.stdout, "HAS-PLACEHOLDER") || !strings.Contains(r.stdout, "pong") {
		t.Fatalf("Claude Code with its login outside: %s", r)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range auths {
		if a != "Bearer "+access {
			t.Errorf("the API host received %q, not the host's access token", a)
		}
	}
	if after, _ := os.ReadFile(credPath); string(after) != creds {
		t.Errorf("the host's credentials changed: %s", after)
	}
}

// A secret's wildcard host over a public suffix would send it to every
// domain under it: a launch refuses it before anything starts, naming the
// file, the line and the key (the launcher does not link the public
// suffix list; it asks the supervisor program, as for the network rules).
func TestSecretOverAPublicSuffixIsRefused(t *testing.T) {
	requireSandboxHost(t)
	p := project(t)
	o := runOpts{env: []string{"XDG_CONFIG_HOME=" + cfgHome(t, "[secrets.X]\nhosts = [\"*.co.uk\"]\nenv = \"X\"\n"), "X=some-token"}}
	r := run(t, o, "exec", p, "--", "true")
	if r.code != 80 || !strings.Contains(r.stderr, "public suffix") || !strings.Contains(r.stderr, "config.toml:1 (secrets.X.hosts)") {
		t.Fatalf("a secret for *.co.uk: want exit 80 naming the file and key: %s", r)
	}
	o.env[0] = "XDG_CONFIG_HOME=" + cfgHome(t, "[secrets.X]\nhosts = [\"*.example.co.uk\"]\nenv = \"X\"\n")
	if r := run(t, o, "exec", p, "--", "true"); r.code != 0 {
		t.Fatalf("a secret for *.example.co.uk: %s", r)
	}
}
