package tests

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
)

// No private key inside, and the SSH agent through the supervisor's
// filter: probed from inside real sandboxes, with a real ssh-agent on the
// host holding two keys of which the configuration allows one, and (as
// root) a real sshd the sandbox pushes to over git.

func TestSSHBubblewrap(t *testing.T) {
	requireSandboxHost(t)
	buildJSON(t, runOpts{})
	home := filepath.Join(dirOf(t, nil), "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	p := project(t)
	sshProbes(t, sh, p, home, nil)
}

func TestSSHContainer(t *testing.T) {
	run, p := containerRunner(t)
	u := containerUser(t)
	home := "/home/" + u.name
	if st, err := os.Stat(home); err != nil || !st.IsDir() {
		t.Skipf("%s has no home directory %s", u.name, home)
	}
	sshProbes(t, run, p, home, &u)
}

// dirOf is a directory under the test's work directory, given to u (nil:
// this process's user), reachable by every user.
func dirOf(t *testing.T, u *sudoUser) string {
	t.Helper()
	d, err := os.MkdirTemp(workDir, "ssh-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	t.Cleanup(func() { os.RemoveAll(d) })
	if u != nil {
		if err := os.Chown(d, u.uid, u.gid); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// asUser runs a command as u (nil: as this process).
func asUser(u *sudoUser, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	if u != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid)}}
	}
	return cmd
}

type sshKey struct{ priv, pub, fingerprint string }

func newSSHKey(t *testing.T, u *sudoUser, dir, name string) sshKey {
	t.Helper()
	k := sshKey{priv: filepath.Join(dir, name), pub: filepath.Join(dir, name+".pub")}
	if out, err := asUser(u, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name+"@csb-test", "-f", k.priv).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	out, err := exec.Command("ssh-keygen", "-lf", k.pub).Output()
	if err != nil {
		t.Fatal(err)
	}
	k.fingerprint = strings.Fields(string(out))[1]
	return k
}

// startHostAgent runs ssh-agent as u (whose supervisor will talk to it:
// the agent refuses other users) holding the keys.
func startHostAgent(t *testing.T, u *sudoUser, dir string, keys ...sshKey) string {
	t.Helper()
	sock := filepath.Join(dir, "agent.sock")
	agent := asUser(u, "ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, k := range keys {
		add := asUser(u, "ssh-add", "-q", k.priv)
		add.Env = []string{"SSH_AUTH_SOCK=" + sock}
		if out, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add: %v\n%s", err, out)
		}
	}
	return sock
}

func sshProbes(t *testing.T, in inSandbox, p, home string, u *sudoUser) {
	testenv.RequireProgram(t, "ssh-agent")
	testenv.RequireProgram(t, "ssh-keygen")
	keyDir := dirOf(t, u)
	allowed, other := newSSHKey(t, u, keyDir, "allowed"), newSSHKey(t, u, keyDir, "other")
	sock := startHostAgent(t, u, keyDir, allowed, other)

	// A private key in ~/.ssh, as a user has one, with its public half
	// and a client configuration.
	sshDir := filepath.Join(home, ".ssh")
	if _, err := os.Stat(sshDir); os.IsNotExist(err) {
		if err := os.Mkdir(sshDir, 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(sshDir) })
	}
	keyName := fmt.Sprintf("id_csb_%d", os.Getpid())
	privData, _ := os.ReadFile(allowed.priv)
	pubData, _ := os.ReadFile(allowed.pub)
	for name, data := range map[string][]byte{keyName: privData, keyName + ".pub": pubData} {
		path := filepath.Join(sshDir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(path) })
		if u != nil {
			os.Chown(path, u.uid, u.gid)
		}
	}
	if u != nil {
		os.Chown(sshDir, u.uid, u.gid)
	}

	o := runOpts{env: []string{"SSH_AUTH_SOCK=" + sock}}
	if u == nil {
		o.env = append(o.env, "HOME="+home)
	}
	script := `echo "LS=$(ls -A ~/.ssh | tr '\n' ' ')"
cat ~/.ssh/` + keyName + ` >/dev/null 2>&1 && echo KEY-READ
test -e ~/.ssh/` + keyName + ` && echo KEY-VISIBLE
ssh-add -l; echo "LIST-EXIT=$?"
ssh-add -D; echo "REMOVE-ALL-EXIT=$?"
ssh-add -d ~/.ssh/` + keyName + `.pub; echo "REMOVE-EXIT=$?"
echo message > /tmp/csb-msg && ssh-keygen -Y sign -f ~/.ssh/` + keyName + `.pub -n file /tmp/csb-msg >/dev/null 2>&1 && echo SIGNED`
	r := in(t, o, p, script, "--ssh-key", allowed.fingerprint)
	if r.code != 0 {
		t.Fatalf("probe: %s", r)
	}
	for _, bad := range []string{"KEY-READ", "KEY-VISIBLE", other.fingerprint, "REMOVE-ALL-EXIT=0", "REMOVE-EXIT=0"} {
		if strings.Contains(r.stdout, bad) {
			t.Errorf("inside: %q: %s", bad, r)
		}
	}
	for _, want := range []string{keyName + ".pub", allowed.fingerprint, "LIST-EXIT=0", "SIGNED"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("inside: missing %q: %s", want, r)
		}
	}
	// The host agent still holds both keys.
	list := exec.Command("ssh-add", "-l")
	list.Env = []string{"SSH_AUTH_SOCK=" + sock}
	if out, _ := list.Output(); !strings.Contains(string(out), allowed.fingerprint) || !strings.Contains(string(out), other.fingerprint) {
		t.Errorf("the host agent lost a key: %s", out)
	}
	signed, refused := false, false
	for _, e := range sessionLog(t, runOpts{env: o.env}, p) {
		if e.Service != "ssh-agent" {
			continue
		}
		signed = signed || e.Op == "sign" && e.Decision == "allow" && strings.Contains(e.Target, allowed.fingerprint)
		refused = refused || strings.HasPrefix(e.Op, "remove") && e.Decision == "refuse"
	}
	if !signed || !refused {
		t.Errorf("the session log lacks the signature (%v) or the refused removal (%v)", signed, refused)
	}

	if os.Geteuid() != 0 {
		t.Log("git push over SSH needs a test sshd, which needs root: not probed in this run")
		return
	}
	gitPushOverSSH(t, in, p, o, allowed)
}

// gitPushOverSSH pushes from inside to a repository behind a real sshd on
// the host's loopback, named by address in an allow rule, through the
// proxy (a CONNECT ProxyCommand in bash), signing with the agent.
func gitPushOverSSH(t *testing.T, in inSandbox, p string, o runOpts, key sshKey) {
	sshd, err := exec.LookPath("/usr/sbin/sshd")
	testenv.Require(t, err == nil, "sshd is not installed (Debian: openssh-server)")
	os.MkdirAll("/run/sshd", 0o755)
	dir := dirOf(t, nil)
	hostKey := filepath.Join(dir, "host_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, _ := os.ReadFile(key.pub)
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	conf := filepath.Join(dir, "sshd_config")
	os.WriteFile(conf, []byte(fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile none\n",
		port, hostKey, filepath.Join(dir, "authorized_keys"))), 0o600)
	cmd := exec.Command(sshd, "-D", "-e", "-f", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	hostPub, _ := os.ReadFile(hostKey + ".pub")
	os.WriteFile(filepath.Join(p, "known_hosts"), []byte(fmt.Sprintf("[127.0.0.1]:%d %s", port, hostPub)), 0o644)
	// OpenSSH has no proxy support of its own; the fixture has no netcat.
	os.WriteFile(filepath.Join(p, "connect.sh"), []byte(`exec 3<>/dev/tcp/127.0.0.1/3128
printf 'CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n' "$1" "$2" "$1" "$2" >&3
while IFS= read -r line <&3; do [ "$line" = $'\r' ] && break; done
cat <&3 & exec cat >&3
`), 0o644)
	repo := bareRepo(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	script := `set -e
w=$(mktemp -d) && git init -q -b main "$w" && cd "$w"
git -c user.name=t -c user.email=t@t commit -q --allow-empty -m from-the-sandbox
GIT_SSH_COMMAND="ssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile=` + p + `/known_hosts -o StrictHostKeyChecking=yes -o ProxyCommand='bash ` + p + `/connect.sh %h %p' -p ` + fmt.Sprint(port) + `" git push -q root@127.0.0.1:` + repo + ` main:sandbox
echo PUSHED`
	r := in(t, o, p, script, "--allow", addr)
	if r.code != 0 || !strings.Contains(r.stdout, "PUSHED") {
		t.Fatalf("git push over SSH from inside: %s", r)
	}
	if out, err := exec.Command("git", "--git-dir", repo, "log", "-1", "--format=%s", "sandbox").Output(); err != nil || strings.TrimSpace(string(out)) != "from-the-sandbox" {
		t.Errorf("the pushed commit is not in the host repository: %q %v", out, err)
	}
}
