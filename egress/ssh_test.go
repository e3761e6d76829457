package egress

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// startSSHServer runs an SSH server on loopback that lets anyone in and
// answers every command with "ssh ok: COMMAND": a stand-in for
// github.com:22 that OpenSSH's real client can talk to.
func startSSHServer(t *testing.T) string {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveSSH(c, cfg)
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

func serveSSH(c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "session only")
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			return
		}
		go func() {
			defer ch.Close()
			for r := range chReqs {
				if r.Type != "exec" {
					r.Reply(false, nil)
					continue
				}
				var cmd struct{ Command string }
				ssh.Unmarshal(r.Payload, &cmd)
				r.Reply(true, nil)
				ch.Write([]byte("ssh ok: " + cmd.Command + "\n"))
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
				return
			}
		}()
	}
}

// TestSSHThroughProxy: OpenSSH reaches an allowed host:22 stand-in
// through the proxy with the ProxyCommands people use: OpenBSD netcat
// (SOCKS5 and HTTP CONNECT) and connect-proxy.
func TestSSHThroughProxy(t *testing.T) {
	sshBin := testenv.RequireProgram(t, "ssh")
	port := startSSHServer(t)
	dns := newResolver(map[string][]string{"github.test": {"127.0.0.1"}, "evil.test": {"127.0.0.1"}})
	p := startProxy(t, NewPolicy(Allowlist, mustRules(t, "github.test:"+port, "127.0.0.1:"+port), nil), dns, nil)
	for _, tc := range []struct {
		name, tool, command, op string
	}{
		{"nc -X 5", "nc", "nc -X 5 -x " + p.tcp + " %h %p", "socks5"},
		{"nc -X connect", "nc", "nc -X connect -x " + p.tcp + " %h %p", "CONNECT"},
		{"connect -S", "connect", "connect -S " + p.tcp + " %h %p", "socks5"},
		{"connect -H", "connect", "connect -H " + p.tcp + " %h %p", "CONNECT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testenv.RequireProgram(t, tc.tool)
			run := func(host string) (string, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				out, err := exec.CommandContext(ctx, sshBin, "-F", "/dev/null",
					"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
					"-o", "ProxyCommand="+tc.command, "-p", port, "git@"+host, "git-upload-pack", "'x.git'").CombinedOutput()
				return string(out), err
			}
			out, err := run("github.test")
			if err != nil || !strings.Contains(out, "ssh ok: git-upload-pack 'x.git'") {
				t.Fatalf("ssh through %s: %v\n%s", tc.name, err, out)
			}
			if _, ok := p.log.find(t, func(e sessionlog.Entry) bool {
				return e.Op == tc.op && e.Target == "github.test:"+port && e.Decision == sessionlog.Allow
			}); !ok {
				t.Errorf("no allow entry for %s", tc.op)
			}
			if out, err := run("evil.test"); err == nil || strings.Contains(out, "ssh ok") {
				t.Errorf("ssh to a refused host through %s: %v\n%s", tc.name, err, out)
			}
		})
	}
}
