package launch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/claude-sandbox/claude-sandbox/manifest"
	"github.com/claude-sandbox/claude-sandbox/secrets"
)

// Secrets stay outside. A variable a secret binding fills (ANTHROPIC_API_KEY,
// the GitHub tokens with --gh-token, the [secrets] tables) never crosses
// from the host: inside it holds a placeholder, and the sandbox's supervisor
// puts the real value in place of it only in requests to the hosts the
// secret is bound to, through TLS it terminates with a CA made for this
// sandbox (its key stays in the supervisor; its certificate is what the
// sandbox finds in TrustDirInside). The values travel from this process
// to the supervisor on its spec pipe, nowhere else.

// TrustDirInside is where the sandbox finds the files that make its
// clients trust the sandbox's CA.
const TrustDirInside = "/run/claude-sandbox/trust"

// Names of the trust files the supervisor writes (broker.WriteTrust's; a
// test keeps the two in step without this package linking the broker).
const (
	trustBundleFile = "ca-bundle.crt"
	trustCAFile     = "claude-sandbox-ca.crt"
	trustDirName    = "trust"
	chromiumDirName = "chromium-policies"
	// chromiumPolicyDir is where Chromium on Linux reads managed policies.
	chromiumPolicyDir = "/etc/chromium/policies/managed"
)

// sshAgentName is the filtering SSH agent's socket in the run directory.
const sshAgentName = "ssh-agent.sock"

// planSecrets resolves the launch's secrets on the host, for a backend
// whose supervisor brokers them and a sandbox that has a network: without
// one no request could carry them, and none is resolved (no command run).
// A dry run resolves nothing. The bound variables are withheld from the
// sandbox either way.
func (l *Launch) planSecrets(p *Plan) {
	rt := l.Runtime
	if !l.Backend.Traits().SecretBroker || len(rt.Secrets) == 0 {
		return
	}
	rt.secretVars = secretVarsOf(rt)
	if rt.Egress == nil || p.RunDir == "" || l.DryRun {
		return
	}
	p.brokered = true
	set := secrets.Resolve(context.Background(), rt.Secrets, secrets.Options{
		LookupEnv: rt.lookupEnv,
		Inside:    []string{rt.Project, p.StateDir},
	})
	for _, w := range set.Warnings() {
		l.warn(w)
	}
	p.Secrets = set
	if len(set.Seal()) > 0 {
		p.TrustDir = filepath.Join(p.RunDir, trustDirName)
		p.ChromiumPolicies = filepath.Join(p.RunDir, chromiumDirName)
	}
}

// ChromiumTrustMounts make Chromium trust the sandbox's CA, which it
// takes from no variable: its managed policy directory becomes a run
// directory folder holding copies of the policies the sandbox has anyway
// (the closure's, and a NixOS system's) and the CACertificates policy the
// supervisor writes beside them. It replaces whatever mounts puts at that
// directory (the closure's policies, linked).
func ChromiumTrustMounts(p *Plan, m *manifest.Manifest, mounts []Mount) []Mount {
	if p.ChromiumPolicies == "" {
		return mounts
	}
	sources := []string{filepath.Join(m.Env, chromiumPolicyDir)}
	if m.Container != nil {
		sources = append(sources, filepath.Join(m.Container.Toplevel, chromiumPolicyDir))
	}
	for _, dir := range sources {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".json") || e.Name() == chromiumCAPolicy {
				continue
			}
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				continue
			}
			p.Files = append(p.Files, HostFile{Path: filepath.Join(p.ChromiumPolicies, e.Name()), Data: data, Mode: 0o644})
		}
	}
	out := make([]Mount, 0, len(mounts)+1)
	for _, mt := range mounts {
		if mt.Dest != chromiumPolicyDir {
			out = append(out, mt)
		}
	}
	return append(out, Mount{Kind: ROBind, Source: p.ChromiumPolicies, Dest: chromiumPolicyDir})
}

// chromiumCAPolicy is the file the supervisor writes (broker.ChromiumPolicyFile).
const chromiumCAPolicy = "claude-sandbox-ca.json"

// Values of --claude-login.
const (
	ClaudeLoginPlaceholder = "placeholder"
	ClaudeLoginReal        = "real"
)

// ClaudeLoginError is a --claude-login value that is not one.
type ClaudeLoginError struct{ Value string }

func (e *ClaudeLoginError) Error() string {
	return fmt.Sprintf("--claude-login %q: not placeholder or real", e.Value)
}
func (e *ClaudeLoginError) Hint() string {
	return "placeholder (the default) keeps Claude Code's tokens outside; real shows the sandbox your login file as it is"
}

// claudeLoginFile is the sandbox's copy of Claude Code's credentials in
// the run directory.
const claudeLoginFile = "claude-credentials.json"

// ClaudeLoginMounts keep Claude Code's OAuth login outside: where the
// host has one (home's ~/.claude/.credentials.json), the sandbox gets a
// copy holding placeholders, bound over that file (written by the
// supervisor, which puts the host's tokens into requests to the API host
// and performs refreshes with the host's file). --claude-login real keeps
// the host's file visible instead. Call it before SecretMounts: a login
// alone needs the CA too. The first mount is the home's file.
func ClaudeLoginMounts(p *Plan, rt *Runtime, home string) []Mount {
	if !p.brokered || rt.RealClaudeLogin {
		return nil
	}
	cred := filepath.Join(home, ".claude", ".credentials.json")
	if st, err := os.Lstat(cred); err != nil || !st.Mode().IsRegular() || !hasLogin(cred) {
		// No login to keep outside (the start makes an empty file): one
		// made inside goes to the host's file, as Claude Code's would.
		return nil
	}
	p.ClaudeLogin, p.ClaudeConfigDir = filepath.Join(p.RunDir, claudeLoginFile), filepath.Dir(cred)
	if p.TrustDir == "" {
		p.TrustDir = filepath.Join(p.RunDir, trustDirName)
		p.ChromiumPolicies = filepath.Join(p.RunDir, chromiumDirName)
	}
	mounts := []Mount{{Kind: Bind, Source: p.ClaudeLogin, Dest: cred}}
	if !rt.unprotected("~/.claude") {
		// The host's ~/.claude is also visible whole, read-only, at
		// ClaudeHostView (ClaudeHome): its credentials file too.
		mounts = append(mounts, Mount{Kind: ROBind, Source: p.ClaudeLogin, Dest: filepath.Join(ClaudeHostView, ".credentials.json")})
	}
	return mounts
}

// hasLogin says whether a credentials file holds an OAuth login (read at
// most 64 KiB: the file is small).
func hasLogin(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, _ := io.ReadFull(f, buf)
	return bytes.Contains(buf[:n], []byte(`"refreshToken"`))
}

// ApproveKeyPlaceholder carries the user's approval of their API key
// into the sandbox's copy of ~/.claude.json: Claude Code asks before it
// uses an ANTHROPIC_API_KEY it does not find among the approved (by its
// last 20 characters), and the key inside is a placeholder, new each run.
// Where the host's file approves the real key, the copy approves the
// placeholder too; the mount becomes a copy of given bytes.
func ApproveKeyPlaceholder(p *Plan, home string, mounts []Mount) []Mount {
	valueEnd, placeholderEnd, ok := p.Secrets.Suffixes("ANTHROPIC_API_KEY", 20)
	if !ok {
		return mounts
	}
	dest := filepath.Join(home, ".claude.json")
	for i, mt := range mounts {
		if mt.Kind != File || mt.Dest != dest || mt.Source == "" {
			continue
		}
		data, err := SnapshotFile(mt.Source)
		if err != nil {
			return mounts
		}
		var doc map[string]any
		if json.Unmarshal(data, &doc) != nil {
			return mounts
		}
		responses, _ := doc["customApiKeyResponses"].(map[string]any)
		approved, _ := responses["approved"].([]any)
		if !slices.Contains(approved, any(valueEnd)) {
			return mounts
		}
		responses["approved"] = append(approved, placeholderEnd)
		out, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			return mounts
		}
		mt.Source, mt.Data, mt.Secret = "", out, false
		mounts[i] = mt
	}
	return mounts
}

// loginAPIHosts are where the login's access token may go: where the
// ANTHROPIC_API_KEY binding sends the key (api.anthropic.com unless
// configured otherwise).
func loginAPIHosts(rt *Runtime) []string {
	for _, b := range rt.Secrets {
		if b.Name == "ANTHROPIC_API_KEY" {
			return b.HostTexts()
		}
	}
	return nil
}

// withheld says whether a host variable is a secret's (never passed in).
func (rt *Runtime) withheld(name string) bool { return slices.Contains(rt.secretVars, name) }

// SecretMounts and SecretEnv are what a plan with secrets gives the
// sandbox: the trust directory (read-only), each resolved secret's
// placeholder, and the variables that point clients at the CA. The
// bundle replaces a client's roots, so it holds the host's as well;
// NODE_EXTRA_CA_CERTS adds to Node's and Bun's (Claude Code's) own.
func SecretMounts(p *Plan) ([]Mount, map[string]string) {
	if p.Secrets == nil {
		return nil, nil
	}
	env := p.Secrets.Env()
	if env == nil {
		env = map[string]string{}
	}
	if p.TrustDir == "" {
		return nil, env
	}
	bundle := filepath.Join(TrustDirInside, trustBundleFile)
	ca := filepath.Join(TrustDirInside, trustCAFile)
	for k, v := range map[string]string{
		"SSL_CERT_FILE":       bundle, // OpenSSL (curl, Python's ssl, git on NixOS), Go, Rust's native-tls
		"NIX_SSL_CERT_FILE":   bundle, // nixpkgs' OpenSSL and curl, Nix itself
		"REQUESTS_CA_BUNDLE":  bundle, // Python requests, pip
		"CURL_CA_BUNDLE":      bundle, // curl and libcurl users
		"GIT_SSL_CAINFO":      bundle, // git over HTTPS, whatever its TLS library
		"NODE_EXTRA_CA_CERTS": ca,     // Node.js, Bun (Claude Code), Deno
	} {
		env[k] = v
	}
	return []Mount{{Kind: ROBind, Source: p.TrustDir, Dest: TrustDirInside}}, env
}

// planSSHAgent gives a supervised sandbox the filtering SSH agent in
// place of the host's: a socket in the run directory, served by the
// supervisor, forwarding to the host agent only the allowed keys' list
// and sign requests.
func planSSHAgent(p *Plan, rt *Runtime) {
	if p.RunDir == "" {
		return
	}
	sock, _ := rt.lookupEnv("SSH_AUTH_SOCK")
	if !filepath.IsAbs(sock) {
		return
	}
	if st, err := os.Stat(sock); err != nil || st.Mode()&os.ModeSocket == 0 {
		return
	}
	p.SSHAgent, p.SSHUpstream = filepath.Join(p.RunDir, sshAgentName), sock
}

// SSHAgentMounts bind the filtering agent at the sandbox user's runtime
// directory and point SSH_AUTH_SOCK at it.
func SSHAgentMounts(p *Plan, uid int) ([]Mount, map[string]string) {
	if p.SSHAgent == "" {
		return nil, nil
	}
	inside := RuntimeDirInside(uid) + "/ssh-agent"
	return []Mount{{Kind: Bind, Source: p.SSHAgent, Dest: inside}}, map[string]string{"SSH_AUTH_SOCK": inside}
}

// SSHVisible says whether a file of ~/.ssh is one a sandbox may read:
// the client's configuration, the known hosts and public keys; never a
// private key (whatever its name) or anything else.
func SSHVisible(name string) bool {
	return name == "config" || name == "known_hosts" || strings.HasSuffix(name, ".pub")
}

// sshMounts are ~/.ssh's visible files, read-only, in a directory of the
// sandbox user's own. A root launcher (owner set) binds regular files
// only: a symlink there is the user's to point anywhere.
func sshMounts(dir string, owner *Owner) []Mount {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	mounts := []Mount{{Kind: Dir, Dest: dir, Mode: 0o700}}
	for _, e := range entries {
		if !SSHVisible(e.Name()) {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if owner != nil && !e.Type().IsRegular() {
			continue
		}
		if st, err := os.Stat(path); err != nil || !st.Mode().IsRegular() {
			continue
		}
		mounts = append(mounts, Mount{Kind: ROBind, Source: path, Dest: path, Optional: true})
	}
	return mounts
}

func secretVarsOf(rt *Runtime) []string { return secrets.Variables(rt.Secrets) }
