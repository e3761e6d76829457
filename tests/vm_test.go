package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/internal/testenv"
	"github.com/claude-sandbox/claude-sandbox/launch"
)

// End-to-end tests of the vm backend: the guest built from the fixture
// (Debian's kernel, a busybox initrd honouring the NixOS template's boot
// contract), booted by real QEMU under TCG, owned by a real
// claude-sandbox-supervisor and served by the real guest agent (this
// binary) over its virtio-serial port. Every boot costs 10–30 s of
// emulation, so each test combines as many probes as one boot can carry:
// three boots in all (one cut short).

func requireVMHost(t testing.TB) {
	t.Helper()
	requireSandboxHost(t)
	testenv.RequireProgram(t, "qemu-system-x86_64")
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	testenv.Require(t, len(kernels) > 0, "no kernel in /boot for the fixture's guest (apt-get install linux-image-amd64)")
}

// vmHome is a home directory with what the guest gets from it: ~/.ssh
// (its public parts, read-only), ~/.claude (read-write), ~/.gitconfig
// (copied).
func vmHome(t *testing.T) string {
	t.Helper()
	home, err := os.MkdirTemp(workDir, "vmhome-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	for path, text := range map[string]string{
		".ssh/config":           "Host example\n",
		".ssh/known_hosts":      "example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKb3\n",
		".claude/settings.json": "{}\n",
		".gitconfig":            "[user]\n\tname = VM Test\n",
	} {
		p := filepath.Join(home, path)
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return home
}

func vmOpts(home string, extra ...string) runOpts {
	return runOpts{env: append([]string{"HOME=" + home}, extra...)}
}

// vmRecord waits for the running VM of a project to be registered under
// its supervisor, with its control socket.
func vmRecord(t *testing.T, bg *background, project string) *launch.Record {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		recs, _ := launch.Running(stateDir(sharedDirs(), project))
		for _, r := range recs {
			if r.Backend == "vm" && r.Control != "" && isSupervisor(r.PID) {
				return r
			}
		}
		if bg != nil && bg.exited() {
			t.Fatalf("claude-sandbox ended (status %d) before the VM was registered:\n%s", bg.status, bg.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the VM was not registered within 60s")
	return nil
}

// qemuOf waits for the QEMU process the VM's supervisor started.
func qemuOf(t *testing.T, supervisor int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, c := range proc.Children(supervisor) {
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", c)); err == nil && strings.HasPrefix(filepath.Base(exe), "qemu-system") {
				return c
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no QEMU under the supervisor (pid %d)", supervisor)
	return 0
}

// sockets lists the Unix sockets left under a directory.
func sockets(root string) []string {
	var out []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSocket != 0 {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// gone waits until the project has no running sandbox and no socket left:
// the supervisor cleans up after the launch has returned.
func gone(t testing.TB, project string) {
	t.Helper()
	state := stateDir(sharedDirs(), project)
	deadline := time.Now().Add(60 * time.Second)
	for {
		recs, _ := launch.Running(state)
		left := sockets(state)
		if len(recs) == 0 && len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the VM: records %+v, sockets %v", recs, left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// goneNow: the last session's launch has returned, so the VM, its record,
// its sockets and its run directory are gone already (the session left
// through the supervisor, which answered once all was torn down).
func goneNow(t testing.TB, project string) {
	t.Helper()
	state := stateDir(sharedDirs(), project)
	recs, _ := launch.Running(state)
	runs, _ := os.ReadDir(filepath.Join(state, launch.StateRun))
	if left := sockets(state); len(recs) > 0 || len(left) > 0 || len(runs) > 0 {
		t.Errorf("when the last launch returned: records %+v, sockets %v, run directories %v", recs, left, runs)
	}
}

func TestVMBuildChecksTheGuestMounts(t *testing.T) {
	requireVMHost(t)
	b := buildJSON(t, runOpts{}, "vm")
	m, err := os.ReadFile(filepath.Join(b.OutPath, "share/claude-sandbox/manifest.json"))
	if err != nil || !strings.Contains(string(m), `"backend":"vm"`) {
		t.Fatalf("manifest: %v\n%s", err, m)
	}
	// The network is part of the guest (its Nix daemon's proxy): another
	// configuration, another key.
	off := buildJSON(t, runOpts{}, "vm", "--no-network")
	if off.Key == b.Key || off.OutPath == b.OutPath {
		t.Errorf("--no-network built the same guest (%s)", b.OutPath)
	}
	// A module that takes the mounts away (as importing qemu-vm.nix does
	// with its fileSystems override) fails the build instead of booting a
	// guest that mounts nothing.
	module := filepath.Join(t.TempDir(), "lose-mounts.nix")
	os.WriteFile(module, []byte("{ lib, ... }: { fileSystems = lib.mkForce { \"/\" = { device = \"tmpfs\"; fsType = \"tmpfs\"; }; }; }\n"), 0o644)
	r := run(t, runOpts{}, "build", "vm", "--module", module)
	if r.code == 0 || !strings.Contains(r.stderr, "does not mount share") {
		t.Errorf("a guest without its shares built: %s", r)
	}
}

var vmProjectPath string

// vmProject is one project shared by the vm tests that run in sequence, so
// a later test also shows that an earlier one left nothing in its way.
func vmProject(t *testing.T) string {
	if vmProjectPath == "" {
		d, err := os.MkdirTemp(workDir, "vmproject-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(d, 0o755)
		vmProjectPath = filepath.Join(d, "project with space")
		if err := os.Mkdir(vmProjectPath, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return vmProjectPath
}

// TestVMKilledQEMULeavesNothingBehind: QEMU killed mid-boot; the launch
// ends with a clear error, the supervisor removes its sockets and record,
// and the next launch of the same project runs (the next tests use the
// same project).
func TestVMKilledQEMULeavesNothingBehind(t *testing.T) {
	requireVMHost(t)
	home := vmHome(t)
	p := vmProject(t)
	bg := startBackground(t, vmOpts(home), "--backend", "vm", "--accel", "tcg", "exec", p, "--", "sleep", "600")
	rec := vmRecord(t, bg, p)
	if err := syscall.Kill(qemuOf(t, rec.PID), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	code := bg.wait(t, 60*time.Second)
	if code == 0 || !strings.Contains(bg.out.String(), "killed") {
		t.Errorf("a killed QEMU: exit %d, output:\n%s", code, bg.out)
	}
	gone(t, p)
}

// TestVMSessionsLiveTogether boots one guest without network and shows
// the lifetime: `exec P -- sleep 1`, then 0.3 s later a second exec that
// outlives it (its file is written), a third kept running while twenty
// more execs run at once (each writes its line, each exits 0), `enter`
// and `ps` through the supervisor, and a graceful `stop` (the command's
// SIGTERM handler runs), after which nothing of the VM is left when its
// last launch returns. With --network none the guest has only lo and no
// proxy.
func TestVMSessionsLiveTogether(t *testing.T) {
	requireVMHost(t)
	home := vmHome(t)
	p := vmProject(t)
	o := vmOpts(home)
	for _, f := range []string{"b.out", "ready", "stopped", "lines", "net.txt"} {
		os.Remove(filepath.Join(p, f))
	}
	// --network none: the mode's name for --no-network, the same guest.
	vm := []string{"--backend", "vm", "--accel", "tcg", "--network", "none", "exec", p, "--"}
	first := startBackground(t, o, append(vm, "sleep", "1")...)
	time.Sleep(300 * time.Millisecond)
	second := startBackground(t, o, append(vm, "sh", "-c", "sleep 3; echo done > b.out")...)
	time.Sleep(300 * time.Millisecond)
	script := `ls /sys/class/net | tr '\n' ' ' > net.txt
env | grep -i _proxy= >> net.txt
(exec 3<>/dev/tcp/127.0.0.1/3128) 2>/dev/null && echo proxy-port=OPEN >> net.txt
trap 'echo graceful > stopped; exit 0' TERM
touch ready
sleep 600 & wait`
	keeper := startBackground(t, o, append(vm, "bash", "-c", script)...)
	waitForVM(t, keeper, filepath.Join(p, "ready"))
	rec := vmRecord(t, keeper, p)

	if c := first.wait(t, 2*time.Minute); c != 0 {
		t.Errorf("exec -- sleep 1: exit %d:\n%s", c, first.out)
	}
	if c := second.wait(t, 2*time.Minute); c != 0 {
		t.Errorf("the second exec: exit %d:\n%s", c, second.out)
	}
	if data, err := os.ReadFile(filepath.Join(p, "b.out")); err != nil || string(data) != "done\n" {
		t.Errorf("the second exec was cut short when the first ended: b.out %q, %v", data, err)
	}
	if net, _ := os.ReadFile(filepath.Join(p, "net.txt")); strings.TrimSpace(string(net)) != "lo" {
		t.Errorf("a --network none guest: %q, want only lo, no proxy variables, no proxy", net)
	}

	// Twenty at once.
	var wg sync.WaitGroup
	codes := make([]result, 20)
	for i := range codes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			codes[i] = run(t, o, append(vm, "sh", "-c", fmt.Sprintf("sleep 0.5; echo line-%d >> lines", i))...)
		}(i)
	}
	wg.Wait()
	for i, r := range codes {
		if r.code != 0 {
			t.Errorf("exec %d of 20: %s", i, r)
		}
	}
	lines, _ := os.ReadFile(filepath.Join(p, "lines"))
	for i := range codes {
		if !strings.Contains(string(lines), fmt.Sprintf("line-%d\n", i)) {
			t.Errorf("line %d missing:\n%s", i, lines)
		}
	}

	r := run(t, o, "enter", p, "--", "sh", "-c", `echo "entered $PWD"; exit 5`)
	if r.code != 5 || !strings.Contains(r.stdout, "entered "+p) {
		t.Errorf("enter: %s", r)
	}
	r = run(t, o, "ps", "--json")
	var listed []struct {
		Backend  string `json:"backend"`
		PID      int    `json:"pid"`
		Status   string `json:"status"`
		Sessions int    `json:"sessions"`
	}
	json.Unmarshal([]byte(r.stdout), &listed)
	found := false
	for _, e := range listed {
		if e.Backend == "vm" && e.PID == rec.PID {
			found = true
			if !strings.HasPrefix(e.Status, "running, ") || !strings.Contains(e.Status, "Nix store") || e.Sessions < 1 {
				t.Errorf("ps shows the VM as %+v, want running, its Nix store's size, its session", e)
			}
		}
	}
	if !found {
		t.Errorf("ps does not list the VM (supervisor pid %d): %s", rec.PID, r)
	}

	r = run(t, o, "stop", p)
	if r.code != 0 {
		t.Errorf("stop: %s", r)
	}
	code := keeper.wait(t, time.Minute)
	if data, err := os.ReadFile(filepath.Join(p, "stopped")); err != nil || string(data) != "graceful\n" {
		t.Errorf("the command's SIGTERM handler did not run (stop was not graceful): %v; output:\n%s", err, keeper.out)
	}
	if code != 0 {
		t.Errorf("after a graceful stop the launch ended with %d (the handler exits 0):\n%s", code, keeper.out)
	}
	goneNow(t, p)
}

// waitForVM polls until a file the guest writes appears (a boot under
// emulation takes a while).
func waitForVM(t testing.TB, bg *background, path string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if bg.exited() {
			t.Fatalf("the session ended before %s appeared (status %d):\n%s", path, bg.status, bg.out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not appear within 3 minutes:\n%s", path, bg.out)
}

// hostAgent starts an ssh-agent on the host holding one new key, as a
// user's would; its private key file is in home/.ssh.
func hostAgent(t *testing.T, home string) (sock, fingerprint string) {
	t.Helper()
	testenv.RequireProgram(t, "ssh-agent")
	testenv.RequireProgram(t, "ssh-keygen")
	dir, err := os.MkdirTemp("", "vmagent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock = filepath.Join(dir, "agent.sock")
	key := filepath.Join(home, ".ssh", "id_vmtest")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vm-test-key", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	add := exec.Command("ssh-add", key)
	add.Env = []string{"SSH_AUTH_SOCK=" + sock}
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v %s", err, out)
	}
	fp, err := exec.Command("ssh-keygen", "-lf", key+".pub").Output()
	if err != nil {
		t.Fatal(err)
	}
	return sock, strings.Fields(string(fp))[1]
}

// TestVMRunsTheCommand boots once with the network on and checks, inside
// the guest: the command runs as the calling user in the project and can
// write it; the host's store, ~/.ssh and the metadata cannot be written;
// ~/.ssh holds no private key; protected git files refuse writes and the
// host's stay unchanged; the only network is the proxy (no card, a direct
// connection to the host fails), which lets an allowed destination
// through and refuses another by name; the SSH agent is the supervisor's
// filter; nix-build builds in the guest's own store with the guest's own
// daemon; Claude Code runs; the environment is the allowlist. Secrets
// stay outside: the API key and a secret bound to a TLS server on the
// host's loopback are placeholders inside, the bound server receives the
// real value and another allowed one the placeholder unchanged, no real
// value is in any environment or file the guest can read (Claude Code's
// login included: a placeholder copy), the CA is trusted by the
// variables and Chromium's policy. And from
// the host: the API key is neither on a command line nor readable by
// others, the build is not in the host's store, no Nix gateway served the
// guest; the command's exit status comes back, and the guest's Nix store,
// kept between runs, is shown by ps and thrown away by stop --reset-store.
func TestVMRunsTheCommand(t *testing.T) {
	requireVMHost(t)
	home := vmHome(t)
	p := vmProject(t)
	agentSock, fingerprint := hostAgent(t, home)

	// A project with git files to protect.
	git := filepath.Join(p, ".git")
	os.MkdirAll(filepath.Join(git, "hooks"), 0o755)
	os.WriteFile(filepath.Join(git, "config"), []byte("[core]\n\tbare = false\n"), 0o644)
	os.WriteFile(filepath.Join(p, "t.nix"), []byte(`let bash = builtins.storePath (builtins.getEnv "BASH_PATH"); in
derivation { name = "built-in-the-guest-`+strconv.FormatInt(time.Now().UnixNano(), 36)+`"; system = builtins.currentSystem;
  builder = "${bash}/bin/bash"; args = [ "-c" "echo guest > $out" ]; }
`), 0o644)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "host-says-hello") })}
	go srv.Serve(l)
	defer srv.Close()
	port := l.Addr().(*net.TCPAddr).Port
	// A host loopback service no rule names.
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv2 := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "unnamed-service") })}
	go srv2.Serve(l2)
	defer srv2.Close()
	port2 := l2.Addr().(*net.TCPAddr).Port

	// Secrets stay outside: a secret bound to one TLS server on the host's
	// loopback (named by address), another allowed server it is not bound
	// to, the API key, and a Claude Code login.
	bound, other := newRecordingTLS(t), newRecordingTLS(t)
	conf := fmt.Sprintf("[secrets.TEST_TOKEN]\nenv = \"CSB_TEST_TOKEN\"\nhosts = [%q]\n", bound.addr())
	if err := os.WriteFile(filepath.Join(p, "claude-sandbox.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	const loginAccess, loginRefresh = "sk-ant-oat01-REALACCESSabcdefghijklmnopqrstuvwxyz0123456789", "sk-ant-ort01-REALREFRESHabcdefghijklmnopqrstuvwxyz0123456789"
	creds := fmt.Sprintf(`{"claudeAiOauth":{"accessToken":%q,"refreshToken":%q,"expiresAt":4102444800000,"scopes":["user:inference"]}}`, loginAccess, loginRefresh)
	os.WriteFile(filepath.Join(home, ".claude", ".credentials.json"), []byte(creds), 0o600)
	secretEnv := []string{"CSB_TEST_TOKEN=" + realToken, "SSL_CERT_FILE=" + hostRoots(t, bound.srv)}
	if r := run(t, vmOpts(home, secretEnv...), "trust", p); r.code != 0 {
		t.Fatalf("trust: %s", r)
	}

	script := fmt.Sprintf(`
echo "uid=$(id -u) pwd=$PWD home=$HOME backend=$CLAUDE_SANDBOX_BACKEND aws=${AWS_SECRET_ACCESS_KEY:-unset}"
echo "key=${ANTHROPIC_API_KEY:-unset}"
echo "token=${TEST_TOKEN:-unset}"
echo "bound=$(curl -sS -m 30 -H "Authorization: Bearer $TEST_TOKEN" https://%[3]s/bound)"
echo "other=$(curl -sS -m 30 -H "Authorization: Bearer $TEST_TOKEN" https://%[4]s/other)"
echo "env-hits=$(env | grep -c -e REALVALUE -e sk-test-vm-key -e REALACCESS)"
echo "proc-hits=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c -e REALVALUE -e sk-test-vm-key -e REALACCESS)"
echo "file-hits=[$(grep -rsl --exclude=claude-sandbox-agent -e REALVALUE -e sk-test-vm-key -e REALACCESS -e REALREFRESH "$HOME" /etc /run /tmp "$PWD" /mnt/claude-sandbox/meta /mnt/claude-sandbox/claude 2>/dev/null | tr '\n' ' ')]"
grep -q sk-ant-oat01- "$HOME/.claude/.credentials.json" && echo login-placeholder=ok
echo "trust=$SSL_CERT_FILE $NODE_EXTRA_CA_CERTS"
test -s /run/claude-sandbox/trust/ca-bundle.crt && echo trust-bundle=ok
echo "chromium=$(ls /etc/chromium/policies/managed | tr '\n' ' ')"
echo written-in-vm > "$PWD/from-vm.txt" && echo project-write=ok
grep -q example "$HOME/.ssh/config" && echo ssh-read=ok
echo "ssh-dir=$(ls "$HOME/.ssh" | tr '\n' ' ')"
touch "$HOME/.ssh/new" 2>/dev/null && echo ssh-write=WRITABLE || echo ssh-write=refused
grep -q 'VM Test' "$HOME/.gitconfig" && echo gitconfig=ok
test -e "$HOME/.claude/settings.json" && echo claude-dir=ok
echo x > /mnt/claude-sandbox/meta/run.json 2>/dev/null && echo meta-write=WRITABLE || echo meta-write=refused
touch /nix/.ro-store/claude-sandbox-probe 2>/dev/null && echo host-store-write=WRITABLE || echo host-store-write=refused
echo x >> .git/config 2>/dev/null && echo git-config-write=WRITABLE || echo git-config-write=refused
touch .git/hooks/pre-commit 2>/dev/null && echo git-hooks-write=WRITABLE || echo git-hooks-write=refused
echo x >> "$HOME/.claude/settings.json" 2>/dev/null && echo claude-settings-write=WRITABLE || echo claude-settings-write=refused
mkdir -p "$HOME/.claude/hooks" 2>/dev/null && touch "$HOME/.claude/hooks/h" 2>/dev/null && echo claude-hooks-create=WRITABLE || echo claude-hooks-create=refused
echo x > .mcp.json 2>/dev/null && echo mcp-create=WRITABLE || echo mcp-create=refused
mkdir -p .claude 2>/dev/null; echo '{}' > .claude/settings.json 2>/dev/null && echo project-settings-create=WRITABLE || echo project-settings-create=refused
echo '{"from":"vm"}' >> "$HOME/.claude/history.jsonl" && echo history-write=ok
echo "net=$(ls /sys/class/net | tr '\n' ' ')"
curl --noproxy '*' -s -m 5 http://127.0.0.1:%[1]d/ >/dev/null && echo direct-loopback=REACHED || echo direct-loopback=refused
curl --noproxy '*' -s -m 5 http://10.0.2.2:%[1]d/ >/dev/null && echo direct-nat=REACHED || echo direct-nat=refused
echo "proxy-env=$HTTP_PROXY $HTTPS_PROXY $ALL_PROXY $NO_PROXY"
echo "allowed=$(curl -s -m 30 http://127.0.0.1:%[1]d/)"
echo "socks=$(curl -s -m 30 -x "$ALL_PROXY" http://127.0.0.1:%[1]d/)"
echo "refused=$(curl -s -m 30 http://10.0.2.2:%[1]d/)"
echo "unnamed=$(curl -s -m 30 http://127.0.0.1:%[2]d/)"
echo "agent-keys=$(ssh-add -l)"
ssh-add -D >/dev/null 2>&1 && echo agent-remove=ALLOWED || echo agent-remove=refused
export BASH_PATH=$(dirname "$(dirname "$(readlink -f "$(command -v bash)")")")
out=$(NIX_REMOTE=daemon nix-build --option substituters '' --no-out-link t.nix) && echo "built=$out $(cat "$out")"
echo "invocation=${INVOCATION_ID:-unset}"
claude --version
exit 42
`, port, port2, bound.addr(), other.addr())
	bg := startBackground(t, vmOpts(home, append(secretEnv, "ANTHROPIC_API_KEY=sk-test-vm-key", "AWS_SECRET_ACCESS_KEY=aws-secret", "SSH_AUTH_SOCK="+agentSock)...),
		"--backend", "vm", "--accel", "tcg", "--allow", fmt.Sprintf("127.0.0.1:%d", port), "--allow", bound.addr(), "--allow", other.addr(),
		"exec", p, "--", "bash", "-c", script)
	rec := vmRecord(t, bg, p)

	// While it runs: nothing secret where other host users could look.
	qemu := qemuOf(t, rec.PID)
	for _, pid := range []int{rec.PID, qemu} {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), "sk-test-vm-key") || strings.Contains(string(cmdline), realToken) {
			t.Errorf("the API key is on a command line (pid %d)", pid)
		}
	}
	meta := filepath.Join(filepath.Dir(rec.Control), "meta")
	if st, err := os.Stat(meta); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("metadata share %s: %v, want mode 0700", meta, err)
	}
	filepath.WalkDir(meta, func(path string, d fs.DirEntry, err error) error {
		// The CA's certificates are public (the directory is not).
		if err != nil || d.IsDir() || d.Name() == "claude-sandbox-agent" || strings.Contains(path, "/trust/") || strings.Contains(path, "/chromium/") {
			return nil
		}
		if info, err := d.Info(); err == nil && info.Mode().Perm()&0o077 != 0 {
			t.Errorf("metadata file %s is readable by others (%v)", path, info.Mode())
		}
		return nil
	})

	code := bg.wait(t, 5*time.Minute)
	out := bg.out.String()
	if code != 42 {
		t.Fatalf("exit status %d, want the command's 42; output:\n%s", code, out)
	}
	want := []string{
		fmt.Sprintf("uid=%d pwd=%s home=%s backend=vm aws=unset", os.Getuid(), p, home),
		"env-hits=0\n", "proc-hits=0\n", "file-hits=[]\n", "login-placeholder=ok",
		"trust=/run/claude-sandbox/trust/ca-bundle.crt /run/claude-sandbox/trust/claude-sandbox-ca.crt\n", "trust-bundle=ok",
		"claude-sandbox-ca.json",
		"project-write=ok", "ssh-read=ok", "ssh-dir=config id_vmtest.pub known_hosts \n", "ssh-write=refused", "gitconfig=ok",
		"claude-dir=ok", "meta-write=refused", "host-store-write=refused", "git-config-write=refused", "git-hooks-write=refused",
		"claude-settings-write=refused", "claude-hooks-create=refused", "mcp-create=refused", "project-settings-create=refused", "history-write=ok",
		"net=lo \n", "direct-loopback=refused", "direct-nat=refused",
		"proxy-env=http://127.0.0.1:3128 http://127.0.0.1:3128 socks5h://127.0.0.1:3128 localhost,::1\n",
		"allowed=host-says-hello", "socks=host-says-hello", "refused=claude-sandbox refused", "10.0.2.2",
		"unnamed=claude-sandbox refused", fmt.Sprintf("127.0.0.1:%d", port2),
		"agent-keys=256 " + fingerprint, "agent-remove=refused",
		"built=/nix/store/", " guest\n",
		// The agent's environment left nothing of the guest's service behind.
		"invocation=unset",
		// An unpatched binary runs: the loader at its FHS place is nix-ld,
		// not NixOS's stub-ld.
		"(Claude Code)",
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("missing %q in the guest's output:\n%s", w, out)
		}
	}
	// Inside, the API key and the bound secret are placeholders shaped
	// like their values; the bound host received the real value, the
	// other one the placeholder unchanged.
	inside := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && (k == "key" || k == "token") {
			inside[k] = strings.TrimSpace(v)
		}
	}
	if k := inside["key"]; k == "" || k == "unset" || strings.Contains(k, "sk-test-vm-key") {
		t.Errorf("ANTHROPIC_API_KEY inside is %q, want a placeholder", k)
	}
	ph := inside["token"]
	if ph == "" || ph == realToken || !strings.HasPrefix(ph, "ghp_") || len(ph) != len(realToken) {
		t.Errorf("TEST_TOKEN inside is %q, want a placeholder shaped like the value", ph)
	}
	if got := bound.received(); len(got) != 1 || got[0] != "Bearer "+realToken {
		t.Errorf("the bound host received %q, want the real value", got)
	}
	if got := other.received(); len(got) != 1 || got[0] != "Bearer "+ph {
		t.Errorf("another allowed host received %q, want the placeholder unchanged", got)
	}
	if !strings.Contains(out, "bound=GOT:Bearer "+ph) || strings.Contains(out, realToken) || strings.Contains(out, "sk-test-vm-key") {
		t.Errorf("the guest saw a real value, or not the bound host's answer:\n%s", out)
	}
	if data, _ := os.ReadFile(filepath.Join(home, ".claude", ".credentials.json")); string(data) != creds {
		t.Errorf("the host's Claude Code login changed: %s", data)
	}
	if strings.Contains(out, "Linux version") || strings.Contains(out, "Power down") {
		t.Errorf("boot or shutdown noise reached the command's output:\n%s", out)
	}
	if data, err := os.ReadFile(filepath.Join(p, "from-vm.txt")); err != nil || string(data) != "written-in-vm\n" {
		t.Errorf("the file the guest wrote: %q, %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(home, ".ssh", "new")); err == nil {
		t.Error("the guest wrote into ~/.ssh")
	}
	if data, _ := os.ReadFile(filepath.Join(git, "config")); string(data) != "[core]\n\tbare = false\n" {
		t.Errorf("the host's .git/config changed: %q", data)
	}
	if _, err := os.Stat(filepath.Join(git, "hooks", "pre-commit")); err == nil {
		t.Error("a hook appeared on the host")
	}
	// The protection is the core's, as for every backend: ~/.claude's
	// settings unchanged, no hook, no auto-run file made in the project
	// (the placeholders gone with the VM); what Claude Code records still
	// reaches the host.
	if data, _ := os.ReadFile(filepath.Join(home, ".claude", "settings.json")); string(data) != "{}\n" {
		t.Errorf("the host's ~/.claude/settings.json changed: %q", data)
	}
	for _, f := range []string{filepath.Join(home, ".claude", "hooks"), filepath.Join(p, ".mcp.json"), filepath.Join(p, ".claude")} {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("%s exists on the host after the VM", f)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(home, ".claude", "history.jsonl")); !strings.Contains(string(data), `{"from":"vm"}`) {
		t.Errorf("the guest's history did not reach the host: %q", data)
	}
	// The build is the guest's: not in the host's store, and no Nix
	// gateway decided anything for this sandbox (the guest never reached
	// the host's daemon).
	if i := strings.Index(out, "built="); i >= 0 {
		built := strings.Fields(out[i+len("built="):])[0]
		if _, err := os.Stat(built); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the guest's build %s is in the host's store (%v)", built, err)
		}
	}
	logData, _ := os.ReadFile(filepath.Join(stateDir(sharedDirs(), p), launch.SessionLogName))
	for _, line := range strings.Split(string(logData), "\n") {
		if strings.Contains(line, `"sandbox":"`+rec.ID+`"`) && strings.Contains(line, `"service":"nix"`) {
			t.Errorf("the host's Nix daemon gateway served the guest: %s", line)
		}
	}
	goneNow(t, p)

	// The guest's store stays for the next run, and can be thrown away.
	store := filepath.Join(stateDir(sharedDirs(), p), "guest", "nix-store.img")
	if _, err := os.Stat(store); err != nil {
		t.Fatalf("the guest's Nix store was not kept: %v", err)
	}
	r := run(t, vmOpts(home), "stop", "--reset-store", p)
	if r.code != 0 || !strings.Contains(r.stdout, "removed the guest Nix store") {
		t.Errorf("stop --reset-store: %s", r)
	}
	if _, err := os.Stat(store); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the guest's Nix store survived --reset-store: %v", err)
	}
}

// TestVMAccelKVM: where a guest runs under KVM, --accel kvm (and auto)
// boot with it; where /dev/kvm is missing or refused, --accel kvm says so
// and names --accel tcg at once (auto is TCG there, which the other tests
// boot); where it opens but no guest runs (broken nested KVM), both kvm and
// auto end with the same exit and hint instead of hanging.
func TestVMAccelKVM(t *testing.T) {
	requireVMHost(t)
	kvm := probeKVM(t)
	p := vmProject(t)
	home := vmHome(t)
	accels := []string{"kvm"}
	if kvm.kind == kvmWorks || kvm.kind == kvmNoProgress {
		accels = append(accels, "auto")
	}
	for _, accel := range accels {
		start := time.Now()
		r := run(t, vmOpts(home), "--backend", "vm", "--accel", accel, "exec", p, "--", "true")
		t.Logf("--accel %s: exit %d after %s: %s", accel, r.code, time.Since(start).Round(time.Millisecond), strings.TrimSpace(r.stderr))
		if kvm.kind == kvmWorks {
			if r.code != 0 {
				t.Errorf("--accel %s on a machine where KVM works: %s", accel, r)
			}
			continue
		}
		if r.code != 78 || !strings.Contains(r.stderr, "--accel tcg") {
			t.Errorf("--accel %s on a machine with %s: want exit 78 naming --accel tcg: %s", accel, kvm, r)
		}
	}
}

// TestVMEntryNameAndDryRun: the original's command name still selects the
// vm backend, and --dry-run prints QEMU's command line — no network card,
// the agent's port, nothing secret, no host Nix daemon socket — and
// writes nothing.
func TestVMEntryNameAndDryRun(t *testing.T) {
	requireVMHost(t)
	alias := filepath.Join(t.TempDir(), "claude-sandbox-vm")
	if err := os.Symlink(binary, alias); err != nil {
		t.Fatal(err)
	}
	p := project(t)
	dirs := freshDirs(t)
	cmd := exec.Command(alias, "--accel", "tcg", "--dry-run", "exec", p, "--", "true")
	cmd.Env = baseEnv(runOpts{dirs: dirs, env: []string{"ANTHROPIC_API_KEY=sk-dry-run-probe"}})
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("claude-sandbox-vm --dry-run: %v\n%s", err, out)
	}
	var inv struct {
		Path string   `json:"path"`
		Args []string `json:"args"`
	}
	if err := json.Unmarshal(out, &inv); err != nil || !strings.Contains(filepath.Base(inv.Path), "qemu-system") {
		t.Fatalf("claude-sandbox-vm did not plan a VM: %v\n%s", err, out)
	}
	args := strings.Join(inv.Args, " ")
	for _, bad := range []string{"sk-dry-run-probe", "daemon-socket", "-nic user", "-netdev"} {
		if strings.Contains(string(out), bad) {
			t.Errorf("%q in the planned invocation:\n%s", bad, out)
		}
	}
	if !strings.Contains(args, "-nic none") || !strings.Contains(args, "name=org.claude-sandbox.agent") {
		t.Errorf("no agent port, or a network card: %s", args)
	}
	if _, err := os.Stat(filepath.Join(dirs.state, "claude-sandbox", "projects")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("--dry-run wrote the state directory: %v", err)
	}
}

// TestVMNetworkLearnMode boots once in learn mode, the host's own proxy
// standing in for the world: the guest reaches a public name through the
// supervisor's proxy (the same service and policy as every backend's),
// a host loopback service no rule names stays refused even so, and the
// launch prints the rules learned — asked of the supervisor before the
// guest's last session left.
func TestVMNetworkLearnMode(t *testing.T) {
	requireVMHost(t)
	home := vmHome(t)
	p := vmProject(t)
	toml := filepath.Join(p, "claude-sandbox.toml")
	t.Cleanup(func() { os.Remove(toml) })
	upstream, _ := loopbackServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "UPSTREAM-"+r.Host)
	}))
	unnamed, _ := loopbackServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "unnamed-service")
	}))
	script := fmt.Sprintf(`echo "public=$(curl -s -m 30 http://pkg.example.com/a)"
echo "loopback=$(curl -s -m 30 http://%s/)"`, unnamed)
	r := run(t, vmOpts(home, "HTTPS_PROXY=http://"+upstream, "HTTP_PROXY=http://"+upstream),
		"--backend", "vm", "--accel", "tcg", "--network", "learn", "exec", p, "--", "bash", "-c", script)
	if r.code != 0 {
		t.Fatalf("learn mode: %s", r)
	}
	for _, w := range []string{"public=UPSTREAM-pkg.example.com", "loopback=claude-sandbox refused"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("missing %q in the guest's output: %s", w, r)
		}
	}
	if !strings.Contains(r.stderr, `+   "pkg.example.com:80 GET",`) || strings.Contains(r.stderr, unnamed) {
		t.Errorf("learn mode printed no diff with what was reached (and only that): %s", r)
	}
	goneNow(t, p)
}
