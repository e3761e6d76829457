package sshagent

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/sessionlog"
)

// sshServer is a real sshd on a loopback port, accepting the given keys
// for root.
type sshServer struct {
	port      int
	hostKey   testKey
	knownHost string // a known_hosts file naming it
}

func startSSHD(t *testing.T, authorized ...testKey) *sshServer {
	t.Helper()
	testenv.RequireRoot(t) // sshd's privilege separation, and logging in as root
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd, err = exec.LookPath("/usr/sbin/sshd")
	}
	testenv.Require(t, err == nil, "sshd is not installed (Debian: openssh-server)")
	testenv.RequireProgram(t, "ssh")
	// sshd refuses to start without its privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &sshServer{hostKey: newKey(t, dir, "host_key", "test host key")}
	var auth strings.Builder
	for _, k := range authorized {
		auth.WriteString(k.pubLine + "\n")
	}
	authFile := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authFile, []byte(auth.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
`, s.port, s.hostKey.priv, authFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	s.knownHost = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(s.knownHost, []byte(fmt.Sprintf("[127.0.0.1]:%d %s\n", s.port, s.hostKey.pubLine)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshd, "-D", "-e", "-f", conf)
	logf, err := os.Create(filepath.Join(dir, "sshd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("sshd log:\n%s", out)
		}
	})
	waitFor(t, "sshd to listen", func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return s
}

// login runs `ssh root@127.0.0.1 echo …` with only the agent at sock.
func (s *sshServer) login(t *testing.T, sock string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", "-F", "/dev/null", "-p", fmt.Sprint(s.port),
		"-o", "UserKnownHostsFile="+s.knownHost, "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "IdentityFile=none", "-o", "IdentityAgent="+sock,
		"root@127.0.0.1", "echo", "logged-in-through-the-filter")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestSSHLoginThroughFilter: a real ssh login with the agent through the
// filter works with an allowed key, is logged with the server's host key,
// and cannot use a key the configuration hides.
func TestSSHLoginThroughFilter(t *testing.T) {
	requireOpenSSH(t)
	dir := t.TempDir()
	work, home := newKey(t, dir, "work", "me@work"), newKey(t, dir, "home", "me@home")
	host := startHostAgent(t)
	addToHost(t, host, work, home)

	t.Run("allowed key", func(t *testing.T) {
		server := startSSHD(t, work)
		sock, rec := serveFilter(t, host, mustFilter(t, work.fp))
		out, err := server.login(t, sock)
		if err != nil || !strings.Contains(out, "logged-in-through-the-filter") {
			t.Fatalf("ssh login with the allowed key through the filter: %v\n%s", err, out)
		}
		signs := rec.find("sign", sessionlog.Allow)
		if len(signs) != 1 {
			t.Fatalf("want one logged signature, got %+v", rec.all())
		}
		e := signs[0]
		want := `SSH login as "root" to host key ` + server.hostKey.fp
		if !strings.Contains(e.Target, work.fp) || !strings.Contains(e.Reason, want) {
			t.Errorf("signature entry %+v, want the key %s and %q", e, work.fp, want)
		}
		binds := rec.find("session-bind", sessionlog.Allow)
		if len(binds) == 0 || !strings.Contains(binds[0].Target, server.hostKey.fp) {
			t.Errorf("session-bind not forwarded and logged with the server's host key %s: %+v", server.hostKey.fp, rec.all())
		}
	})

	t.Run("hidden key", func(t *testing.T) {
		server := startSSHD(t, home)
		sock, rec := serveFilter(t, host, mustFilter(t, work.fp))
		out, err := server.login(t, sock)
		if err == nil {
			t.Fatalf("ssh login with a key the filter hides succeeded:\n%s", out)
		}
		if !strings.Contains(out, "Permission denied") {
			t.Errorf("ssh failed for another reason than authentication:\n%s", out)
		}
		if s := rec.find("sign", sessionlog.Allow); len(s) != 0 {
			t.Errorf("a signature was made: %+v", s)
		}
		notes := rec.find("list", sessionlog.Note)
		if len(notes) == 0 || !strings.Contains(notes[0].Reason, home.fp) {
			t.Errorf("the hidden key is not named in the log: %+v", rec.all())
		}
	})
}

// TestDestinationConstraintsSurvive: keys the user added with `ssh-add -h`
// work through the filter for the host they are bound to, and only for
// it, because session-bind reaches the host agent on the client's own
// connection. (Refused, the host agent would sign with such a key for no
// host at all: it refuses destination-constrained keys on an unbound
// connection.)
func TestDestinationConstraintsSurvive(t *testing.T) {
	requireOpenSSH(t)
	dir := t.TempDir()
	other := newKey(t, dir, "other_host", "another server's host key")
	for _, tc := range []struct {
		name      string
		allowedTo func(s *sshServer) string // a known_hosts file for ssh-add -H
		wantLogin bool
	}{
		{"constrained to this server", func(s *sshServer) string { return s.knownHost }, true},
		{"constrained to another server", func(s *sshServer) string {
			f := filepath.Join(dir, "other_known_hosts")
			line := fmt.Sprintf("[127.0.0.1]:%d %s\n", s.port, other.pubLine)
			if err := os.WriteFile(f, []byte(line), 0o600); err != nil {
				t.Fatal(err)
			}
			return f
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := newKey(t, t.TempDir(), "key", "constrained")
			server := startSSHD(t, key)
			host := startHostAgent(t)
			dest := fmt.Sprintf("[127.0.0.1]:%d", server.port)
			if out, err := run(t, []string{"SSH_AUTH_SOCK=" + host}, "ssh-add", "-H", tc.allowedTo(server), "-h", dest, key.priv); err != nil {
				t.Fatalf("ssh-add -h: %v\n%s", err, out)
			}
			sock, rec := serveFilter(t, host, AllKeys())
			out, err := server.login(t, sock)
			if got := err == nil && strings.Contains(out, "logged-in-through-the-filter"); got != tc.wantLogin {
				t.Fatalf("login through the filter: %v (want success %v)\n%s\nlog: %+v", err, tc.wantLogin, out, rec.all())
			}
			if len(rec.find("session-bind", sessionlog.Allow)) == 0 {
				t.Errorf("session-bind not forwarded: %+v", rec.all())
			}
		})
	}
}
