package sshagent

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// recorder keeps the session log's entries.
type recorder struct {
	mu      sync.Mutex
	entries []sessionlog.Entry
}

func (r *recorder) Log(e sessionlog.Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entries = append(r.entries, e)
}

func (r *recorder) find(op string, d sessionlog.Decision) []sessionlog.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []sessionlog.Entry
	for _, e := range r.entries {
		if e.Op == op && e.Decision == d {
			out = append(out, e)
		}
	}
	return out
}

func (r *recorder) all() []sessionlog.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]sessionlog.Entry(nil), r.entries...)
}

func requireOpenSSH(t *testing.T) {
	t.Helper()
	for _, p := range []string{"ssh-agent", "ssh-add", "ssh-keygen"} {
		testenv.RequireProgram(t, p)
	}
}

// run runs an OpenSSH tool with a bounded time and the given variables
// (and no inherited agent), and returns its combined output.
func run(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// testKey is a key made by ssh-keygen; its fingerprint is OpenSSH's own.
type testKey struct {
	priv, pub, comment, fp string
	pubLine                string
}

func newKey(t *testing.T, dir, name, comment string) testKey {
	t.Helper()
	k := testKey{priv: filepath.Join(dir, name), pub: filepath.Join(dir, name+".pub"), comment: comment}
	if out, err := run(t, nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", k.priv); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	out, err := run(t, nil, "ssh-keygen", "-l", "-E", "sha256", "-f", k.pub)
	if err != nil {
		t.Fatalf("ssh-keygen -l: %v\n%s", err, out)
	}
	k.fp = strings.Fields(out)[1]
	line, err := os.ReadFile(k.pub)
	if err != nil {
		t.Fatal(err)
	}
	k.pubLine = strings.TrimSpace(string(line))
	return k
}

func (k testKey) public(t *testing.T) ssh.PublicKey {
	t.Helper()
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k.pubLine))
	if err != nil {
		t.Fatal(err)
	}
	return pk
}

// startHostAgent runs a real ssh-agent in the foreground on its own socket.
func startHostAgent(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "host.sock")
	cmd := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	waitFor(t, "the host ssh-agent's socket", func() bool { _, err := os.Stat(sock); return err == nil })
	return sock
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// addToHost loads keys into the host agent and removes the private key
// files, so nothing but the agent can sign with them afterwards.
func addToHost(t *testing.T, hostSock string, keys ...testKey) {
	t.Helper()
	for _, k := range keys {
		if out, err := run(t, []string{"SSH_AUTH_SOCK=" + hostSock}, "ssh-add", k.priv); err != nil {
			t.Fatalf("ssh-add %s: %v\n%s", k.priv, err, out)
		}
		os.Remove(k.priv)
	}
}

// serveFilter serves the filtering agent for upstream on a new socket.
func serveFilter(t *testing.T, upstream string, f *Filter) (string, *recorder) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "filter.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	srv := &Server{Listener: ln, Upstream: upstream, Filter: f, Log: rec}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return sock, rec
}

func mustFilter(t *testing.T, entries ...string) *Filter {
	t.Helper()
	f, err := ParseKeys(entries)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestListShowsOnlyAllowedKeys(t *testing.T) {
	requireOpenSSH(t)
	dir := t.TempDir()
	work, home := newKey(t, dir, "work", "me@work"), newKey(t, dir, "home", "me@home")
	host := startHostAgent(t)
	addToHost(t, host, work, home)

	for _, tc := range []struct {
		name   string
		filter *Filter
		shown  []testKey
		hidden []testKey
	}{
		{"default", AllKeys(), []testKey{work, home}, nil},
		{"by fingerprint", mustFilter(t, work.fp), []testKey{work}, []testKey{home}},
		{"by comment glob", mustFilter(t, "*@home"), []testKey{home}, []testKey{work}},
		{"none", mustFilter(t), nil, []testKey{work, home}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock, rec := serveFilter(t, host, tc.filter)
			out, err := run(t, []string{"SSH_AUTH_SOCK=" + sock}, "ssh-add", "-l")
			if len(tc.shown) == 0 {
				if err == nil || !strings.Contains(out, "no identities") {
					t.Fatalf("ssh-add -l through the filter: %v\n%s\nwant: no identities", err, out)
				}
			} else if err != nil {
				t.Fatalf("ssh-add -l through the filter: %v\n%s", err, out)
			}
			for _, k := range tc.shown {
				if !strings.Contains(out, k.fp) {
					t.Errorf("ssh-add -l does not list the allowed key %s (%s):\n%s", k.fp, k.comment, out)
				}
			}
			for _, k := range tc.hidden {
				if strings.Contains(out, k.fp) {
					t.Errorf("ssh-add -l lists the key %s (%s) the filter hides:\n%s", k.fp, k.comment, out)
				}
				notes := rec.find("list", sessionlog.Note)
				if len(notes) != 1 || !strings.Contains(notes[0].Reason, k.fp) {
					t.Errorf("no note naming the hidden key %s: %+v", k.fp, rec.all())
				}
			}
		})
	}
}

func TestKeyManagementRefused(t *testing.T) {
	requireOpenSSH(t)
	dir := t.TempDir()
	work, home, extra := newKey(t, dir, "work", "me@work"), newKey(t, dir, "home", "me@home"), newKey(t, dir, "extra", "extra")
	host := startHostAgent(t)
	addToHost(t, host, work, home)
	sock, rec := serveFilter(t, host, AllKeys())

	askpass := filepath.Join(dir, "askpass")
	if err := os.WriteFile(askpass, []byte("#!/bin/sh\necho lock-password\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	env := []string{"SSH_AUTH_SOCK=" + sock, "SSH_ASKPASS=" + askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0"}
	for _, tc := range []struct {
		args []string
		op   string
	}{
		{[]string{"-d", work.pub}, "remove"},
		{[]string{"-D"}, "remove-all"},
		{[]string{"-x"}, "lock"},
		{[]string{"-X"}, "unlock"},
		{[]string{extra.priv}, "add"},
	} {
		out, err := run(t, env, "ssh-add", tc.args...)
		if err == nil {
			t.Errorf("ssh-add %s through the filter succeeded:\n%s", strings.Join(tc.args, " "), out)
		}
		refusals := rec.find(tc.op, sessionlog.Refuse)
		if len(refusals) == 0 {
			t.Errorf("ssh-add %s: no refusal logged (op %q): %+v", strings.Join(tc.args, " "), tc.op, rec.all())
			continue
		}
		for _, e := range refusals {
			if e.Service != "ssh-agent" || e.Reason == "" || e.Fix == "" || e.Rule == "" || e.Time.IsZero() {
				t.Errorf("refusal entry lacks service, reason, rule, fix or time: %+v", e)
			}
		}
	}
	if e := rec.find("remove", sessionlog.Refuse); len(e) > 0 && e[0].Target != work.fp {
		t.Errorf("the removal refusal names %q, want the key %s", e[0].Target, work.fp)
	}
	// The host agent is untouched: both keys, not locked.
	out, err := run(t, []string{"SSH_AUTH_SOCK=" + host}, "ssh-add", "-l")
	if err != nil || !strings.Contains(out, work.fp) || !strings.Contains(out, home.fp) || strings.Contains(out, extra.fp) {
		t.Errorf("host agent changed through the filter: %v\n%s", err, out)
	}
}

func TestSignAllowedKeyOnly(t *testing.T) {
	requireOpenSSH(t)
	dir := t.TempDir()
	work, home := newKey(t, dir, "work", "me@work"), newKey(t, dir, "home", "me@home")
	host := startHostAgent(t)
	addToHost(t, host, work, home)
	sock, rec := serveFilter(t, host, mustFilter(t, "*@work"))
	env := []string{"SSH_AUTH_SOCK=" + sock}

	msg := filepath.Join(dir, "message")
	if err := os.WriteFile(msg, []byte("commit 1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The private key files are gone: only the agent can sign.
	if out, err := run(t, env, "ssh-keygen", "-Y", "sign", "-f", work.pub, "-n", "git", msg); err != nil {
		t.Fatalf("signing with the allowed key through the filter: %v\n%s", err, out)
	}
	signers := filepath.Join(dir, "allowed_signers")
	if err := os.WriteFile(signers, []byte("me@work "+work.pubLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	verify := exec.Command("ssh-keygen", "-Y", "verify", "-f", signers, "-I", "me@work", "-n", "git", "-s", msg+".sig")
	verify.Stdin, _ = os.Open(msg)
	if out, err := verify.CombinedOutput(); err != nil {
		t.Fatalf("the signature made through the filter does not verify: %v\n%s", err, out)
	}
	allowed := rec.find("sign", sessionlog.Allow)
	if len(allowed) != 1 {
		t.Fatalf("want one allowed signature in the log, got %+v", rec.all())
	}
	e := allowed[0]
	if !strings.Contains(e.Target, work.fp) || !strings.Contains(e.Target, "me@work") || e.Time.IsZero() ||
		!strings.Contains(e.Reason, `namespace "git"`) || !strings.Contains(e.Rule, "*@work") {
		t.Errorf("signature log entry: %+v", e)
	}

	// ssh-keygen cannot even find the hidden key.
	if out, err := run(t, env, "ssh-keygen", "-Y", "sign", "-f", home.pub, "-n", "git", msg); err == nil {
		t.Fatalf("signing with the hidden key through the filter succeeded:\n%s", out)
	}
	// A client that asks anyway is refused, and the refusal says how to allow it.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := agent.NewClient(c).Sign(home.public(t), []byte("data")); err == nil {
		t.Fatal("the filter signed with a key the configuration does not allow")
	}
	refused := rec.find("sign", sessionlog.Refuse)
	if len(refused) != 1 {
		t.Fatalf("want one refused signature in the log, got %+v", rec.all())
	}
	r := refused[0]
	if !strings.Contains(r.Target, home.fp) || !strings.Contains(r.Target, "me@home") || !strings.Contains(r.Fix, `"`+home.fp+`"`) || !strings.Contains(r.Fix, "ssh-keys = [") {
		t.Errorf("refusal entry does not name the key and the line that allows it: %+v", r)
	}
	if a, rf := (&Server{}).Counts(); a != 0 || rf != 0 {
		t.Error("a new server has counts")
	}
}

func TestProtocolLimits(t *testing.T) {
	requireOpenSSH(t)
	dir := t.TempDir()
	work := newKey(t, dir, "work", "me@work")
	host := startHostAgent(t)
	addToHost(t, host, work)
	sock, rec := serveFilter(t, host, AllKeys())

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client := agent.NewClient(c)
	if _, err := client.Extension("query", nil); !errors.Is(err, agent.ErrExtensionUnsupported) {
		t.Errorf("extension query: got %v, want a plain failure (unsupported)", err)
	}
	if e := rec.find("extension", sessionlog.Refuse); len(e) != 1 || e[0].Target != "query" {
		t.Errorf("extension refusal: %+v", rec.all())
	}
	// Requests the agent package has no method for are refused and logged
	// too. (On a connection of their own: the package's client keeps
	// reading the one it was given.)
	c.Close()
	c, err = net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, tc := range []struct {
		msg []byte
		op  string
	}{
		{[]byte{msgAddSmartcardKey, 0, 0, 0, 1, 'x', 0, 0, 0, 0}, "add-smartcard"},
		{[]byte{msgRemoveSmartcardKey, 0, 0, 0, 1, 'x', 0, 0, 0, 0}, "remove-smartcard"},
		{[]byte{99}, "request 99"},
	} {
		if err := writeFrame(c, tc.msg); err != nil {
			t.Fatal(err)
		}
		reply, err := readFrame(c, maxReply, time.Second)
		if err != nil || len(reply) != 1 || reply[0] != msgFailure {
			t.Errorf("request %d: reply %v, %v; want a failure", tc.msg[0], reply, err)
		}
		if e := rec.find(tc.op, sessionlog.Refuse); len(e) != 1 || e[0].Fix == "" {
			t.Errorf("request %d: refusal %q not logged: %+v", tc.msg[0], tc.op, rec.all())
		}
	}
	// A message larger than any agent request closes the connection.
	if _, err := c.Write([]byte{0, 0x10, 0, 0, msgSignRequest}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 8)); err == nil {
		t.Errorf("an oversized request got %d bytes of answer, want the connection closed", n)
	}
	if e := rec.find("request", sessionlog.Refuse); len(e) != 1 || !strings.Contains(e[0].Reason, "too large") {
		t.Errorf("oversized request: %+v", rec.all())
	}
	// The next connection works.
	c2, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if keys, err := agent.NewClient(c2).List(); err != nil || len(keys) != 1 {
		t.Errorf("list after an oversized request: %v, %v", keys, err)
	}
}

// TestServeEndsEverything: when the supervisor ends, connections that are
// idle, half-way through a message, or waiting for the host agent all end,
// and no goroutine is left behind.
func TestServeEndsEverything(t *testing.T) {
	dir := t.TempDir()
	// A host agent that accepts and never answers.
	upSock := filepath.Join(dir, "mute.sock")
	up, err := net.Listen("unix", upSock)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	var held []net.Conn
	var heldMu sync.Mutex
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			heldMu.Lock()
			held = append(held, c)
			heldMu.Unlock()
		}
	}()
	defer func() {
		heldMu.Lock()
		defer heldMu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()

	before := countGoroutines()
	sock := filepath.Join(dir, "filter.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Listener: ln, Upstream: upSock, Log: &recorder{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()

	idle, _ := net.Dial("unix", sock)
	half, _ := net.Dial("unix", sock)
	waiting, _ := net.Dial("unix", sock)
	for _, c := range []net.Conn{idle, half, waiting} {
		if c == nil {
			t.Fatal("dial failed")
		}
		defer c.Close()
	}
	half.Write([]byte{0, 0, 0, 9, msgSignRequest})
	waiting.Write([]byte{0, 0, 0, 1, msgRequestIdentities})
	waitFor(t, "the filter to reach the host agent", func() bool {
		heldMu.Lock()
		defer heldMu.Unlock()
		return len(held) == 1
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	for _, c := range []net.Conn{idle, half, waiting} {
		// The waiting one may first get its failure answer; then the end.
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("a connection is still open after Serve returned: %v", err)
		}
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Error("the socket still accepts after Serve returned")
	}
	waitFor(t, "goroutines to end", func() bool { return countGoroutines() <= before })
}

func TestConnectionLimit(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "filter.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	srv := &Server{Listener: ln, Upstream: filepath.Join(dir, "none.sock"), Log: rec, MaxConns: 2}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx)
	var conns []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	_ = conns[2].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conns[2].Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the connection over the limit was not closed: %v", err)
	}
	if e := rec.find("connect", sessionlog.Refuse); len(e) != 1 {
		t.Errorf("connection limit not logged: %+v", rec.all())
	}
	// A host agent that is not there: an empty agent, and a note.
	if keys, err := agent.NewClient(conns[0]).List(); err != nil || len(keys) != 0 {
		t.Errorf("listing without a host agent: %v, %v; want an empty list", keys, err)
	}
	if e := rec.find("list", sessionlog.Note); len(e) != 1 || !strings.Contains(e[0].Reason, "cannot be reached") {
		t.Errorf("missing host agent not noted: %+v", rec.all())
	}
}
