package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// The network policy, probed from inside real sandboxes against servers
// this test starts on the host's loopback (never an outside address): the
// sandbox's one way out is its proxy, which lets through only what the
// rules allow, and says what it refused.

func TestNetworkPolicyBubblewrap(t *testing.T) {
	run, p := bubblewrapRunner(t)
	networkProbes(t, run, p)
}

func TestNetworkPolicyContainer(t *testing.T) {
	run, p := containerRunner(t)
	networkProbes(t, run, p)
}

// loopbackServer serves h on the host's loopback and counts connections.
func loopbackServer(t *testing.T, h http.Handler) (addr string, conns func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			n++
			mu.Unlock()
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

func port(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }

func networkProbes(t *testing.T, run inSandbox, p string) {
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "HELLO-"+r.URL.Path) })
	allowed, _ := loopbackServer(t, hello)
	hidden, hiddenConns := loopbackServer(t, hello)
	allow := []string{"--allow", allowed}

	// A host program listening on an abstract Unix socket (as X servers do):
	// it lives in the host's network namespace, which no sandbox shares.
	abstract := fmt.Sprintf("csb-abstract-%d", os.Getpid())
	al, err := net.Listen("unix", "@"+abstract)
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	abstractHits := make(chan struct{}, 8)
	go func() {
		for {
			c, err := al.Accept()
			if err != nil {
				return
			}
			abstractHits <- struct{}{}
			c.Close()
		}
	}()
	abstractProbe := fmt.Sprintf(`python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.connect("\0%s"); print("ABSTRACT-CONNECTED")'`, abstract)
	hiddenProbe := `curl -s -m 10 http://` + hidden + `/x; echo; curl -s -m 10 --noproxy '*' http://` + hidden + `/x`
	for _, mode := range []string{"allowlist", "open", "learn", "none"} {
		r := run(t, runOpts{}, p, abstractProbe+`; `+hiddenProbe, "--network", mode)
		if strings.Contains(r.stdout, "ABSTRACT-CONNECTED") {
			t.Errorf("--network %s: a host abstract Unix socket was reachable: %s", mode, r)
		}
		if strings.Contains(r.stdout, "HELLO") {
			t.Errorf("--network %s: a host loopback service no rule names was reached: %s", mode, r)
		}
	}
	select {
	case <-abstractHits:
		t.Error("the host's abstract socket saw a connection from inside")
	default:
	}
	if n := hiddenConns(); n != 0 {
		t.Errorf("the unnamed loopback service saw %d connections", n)
	}

	// An allowed destination, through the proxy, for the usual clients.
	repo := bareRepo(t)
	gitSrv, _ := loopbackServer(t, &cgi.Handler{
		Path: gitHTTPBackend(t), Env: []string{"GIT_PROJECT_ROOT=" + filepath.Dir(repo), "GIT_HTTP_EXPORT_ALL=1"},
	})
	npmReg, _ := loopbackServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, "{}")
	}))
	clients := `set -e
curl -s -m 10 http://` + allowed + `/curl; echo
python3 -c 'import urllib.request as u; print(u.urlopen("http://` + allowed + `/python").read().decode())'
git ls-remote http://` + gitSrv + `/` + filepath.Base(repo) + ` | grep -q refs/heads/main && echo GIT-OK
npm ping --registry http://` + npmReg + `/ >/dev/null 2>&1 && echo NPM-OK
curl -s -m 10 --socks5-hostname 127.0.0.1:3128 http://` + allowed + `/socks; echo`
	r := run(t, runOpts{}, p, clients, append(allow, "--allow", gitSrv, "--allow", npmReg, "--with", "nodejs")...)
	for _, want := range []string{"HELLO-/curl", "HELLO-/python", "GIT-OK", "NPM-OK", "HELLO-/socks"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("an allowed destination through the proxy: missing %q: %s", want, r)
		}
	}

	// A refused destination: the refusal names it and the line that allows it.
	r = run(t, runOpts{}, p, `curl -s -m 10 -w '\ncode=%{http_code}' http://`+hidden+`/`, allow...)
	if !strings.Contains(r.stdout, "code=403") || !strings.Contains(r.stdout, hidden) || !strings.Contains(r.stdout, `allow = ["`+hidden+`"]`) {
		t.Errorf("a refused destination: want 403 naming %s and its allow line: %s", hidden, r)
	}
	// A direct connection that ignores the proxy has no way out.
	r = run(t, runOpts{}, p, `curl -s -m 5 --noproxy '*' http://`+allowed+`/direct; echo " exit=$?"`, allow...)
	if strings.Contains(r.stdout, "HELLO") {
		t.Errorf("a direct connection bypassed the proxy: %s", r)
	}
	// A name that resolves to loopback needs the address named too.
	byName := `curl -s -m 10 --noproxy '' http://localhost:` + port(allowed) + `/name`
	if r = run(t, runOpts{}, p, byName, "--allow", "localhost:"+port(allowed)); strings.Contains(r.stdout, "HELLO") {
		t.Errorf("a name resolving to loopback got through on a name rule alone: %s", r)
	}
	if r = run(t, runOpts{}, p, byName, "--allow", "localhost:"+port(allowed), "--allow", allowed); !strings.Contains(r.stdout, "HELLO-/name") {
		t.Errorf("a name resolving to a loopback address that a rule names was refused: %s", r)
	}

	// Every decision is in the session log.
	var allowedSeen, refusedSeen bool
	for _, e := range sessionLog(t, runOpts{}, p) {
		if e.Service != "net" {
			continue
		}
		allowedSeen = allowedSeen || e.Decision == "allow" && e.Target == allowed
		refusedSeen = refusedSeen || e.Decision == "refuse" && e.Target == hidden
	}
	if !allowedSeen || !refusedSeen {
		t.Errorf("the session log lacks the allowed (%v) or the refused (%v) decision", allowedSeen, refusedSeen)
	}
}

// bareRepo makes a bare git repository with one commit on main.
func bareRepo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	work, bare := filepath.Join(dir, "work"), filepath.Join(dir, "repo.git")
	for _, args := range [][]string{
		{"init", "-q", "-b", "main", work},
		{"-C", work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"},
		{"clone", "-q", "--bare", work, bare},
	} {
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	return bare
}

func gitHTTPBackend(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(strings.TrimSpace(string(out)), "git-http-backend")
	_, err = os.Stat(p)
	testenv.Require(t, err == nil, "git-http-backend ("+p+")")
	return p
}

// Learn mode, with allowed destinations reached through the host's own
// (corporate) proxy: what a run reached becomes the allow rules that, once
// written and trusted, let the same run pass in allowlist mode, and nothing
// else.
func TestNetworkLearnMode(t *testing.T) {
	sbx, p := bubblewrapRunner(t)
	// The host's proxy: answers every request itself, as the way to the
	// world (the names it gets need no resolution here).
	var mu sync.Mutex
	var asked []string
	upstream, _ := loopbackServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.Host)
		mu.Unlock()
		io.WriteString(w, "UPSTREAM-"+r.Host)
	}))
	o := runOpts{env: []string{"HTTPS_PROXY=http://" + upstream, "HTTP_PROXY=http://" + upstream}}
	fetch := `curl -s -m 10 http://pkg.example.com/a; echo; curl -s -m 10 http://files.example.org/b; echo`

	r := sbx(t, o, p, fetch, "--network", "learn", "--write-learned")
	if !strings.Contains(r.stdout, "UPSTREAM-pkg.example.com") || !strings.Contains(r.stdout, "UPSTREAM-files.example.org") {
		t.Fatalf("learn mode did not let the run through the host's proxy: %s", r)
	}
	// The minimal rules: the port and the method each host was reached with.
	if !strings.Contains(r.stderr, `+   "pkg.example.com:80 GET",`) || !strings.Contains(r.stderr, `+   "files.example.org:80 GET",`) {
		t.Errorf("learn mode printed no diff with what was reached: %s", r)
	}
	data, _ := os.ReadFile(filepath.Join(p, "claude-sandbox.toml"))
	if !strings.Contains(string(data), `"pkg.example.com:80 GET"`) {
		t.Fatalf("--write-learned wrote %q", data)
	}

	// The written rules widen access: the next launch needs trust.
	if r := sbx(t, o, p, fetch); r.code != 79 {
		t.Fatalf("a launch with the learned, untrusted rules: want exit 79: %s", r)
	}
	if r := run(t, o, "trust", p); r.code != 0 {
		t.Fatalf("trust: %s", r)
	}
	r = sbx(t, o, p, fetch+`; curl -s -m 10 -w 'code=%{http_code}' http://other.example.net/c`)
	if !strings.Contains(r.stdout, "UPSTREAM-pkg.example.com") || !strings.Contains(r.stdout, "UPSTREAM-files.example.org") {
		t.Errorf("allowlist mode with the learned rules refused what learn mode reached: %s", r)
	}
	if !strings.Contains(r.stdout, "code=403") || strings.Contains(r.stdout, "UPSTREAM-other.example.net") {
		t.Errorf("allowlist mode let through what was never learned: %s", r)
	}
}

// Claude Code works under the default allowlist: --version, and a start
// against a local stand-in of its API, named by address in a rule.
func TestClaudeCodeUnderTheDefaultAllowlist(t *testing.T) {
	sbx, p := bubblewrapRunner(t)
	api, _ := loopbackServer(t, standInAPI())
	env := runOpts{env: []string{"ANTHROPIC_BASE_URL=http://" + api, "ANTHROPIC_API_KEY=sk-ant-test",
		"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1", "DISABLE_AUTOUPDATER=1"}}
	r := sbx(t, env, p, `claude --version && claude -p ping --max-turns 1`,
		"--allow", api, "--env", "ANTHROPIC_BASE_URL", "--env", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "--env", "DISABLE_AUTOUPDATER")
	if r.code != 0 || !strings.Contains(r.stdout, "Claude Code") || !strings.Contains(r.stdout, "pong") {
		t.Fatalf("Claude Code under the default allowlist: %s", r)
	}
}

// standInAPI answers Claude Code's Messages API requests with "pong".
func standInAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/messages" {
			http.NotFound(w, r)
			return
		}
		var req struct {
			Stream bool `json:"stream"`
			Model  string
		}
		body, _ := io.ReadAll(r.Body)
		json.Unmarshal(body, &req)
		msg := map[string]any{"id": "msg_1", "type": "message", "role": "assistant", "model": req.Model,
			"content": []any{}, "stop_reason": nil, "usage": map[string]int{"input_tokens": 1, "output_tokens": 1}}
		if !req.Stream {
			msg["content"] = []any{map[string]string{"type": "text", "text": "pong"}}
			msg["stop_reason"] = "end_turn"
			json.NewEncoder(w).Encode(msg)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		ev := func(name string, v any) {
			b, _ := json.Marshal(v)
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b)
			w.(http.Flusher).Flush()
		}
		ev("message_start", map[string]any{"type": "message_start", "message": msg})
		ev("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]string{"type": "text", "text": ""}})
		ev("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]string{"type": "text_delta", "text": "pong"}})
		ev("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
		ev("message_delta", map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": "end_turn"}, "usage": map[string]int{"output_tokens": 1}})
		ev("message_stop", map[string]any{"type": "message_stop"})
	})
}
