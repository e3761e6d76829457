package launch

import (
	"os"
	"path/filepath"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Nix inside a sandbox goes through the Nix daemon gateway that the
// sandbox's supervisor serves: its socket is bound where Nix clients look
// for the daemon's, and the host's raw socket is never bound. The sandbox
// gets a Nix configuration of its own instead of the host's /etc/nix,
// which can carry secrets (access-tokens, a netrc-file) and settings a
// client would send the daemon on every connection (substituters,
// sandbox), each of which the gateway refuses.

// DaemonSocketInside is where Nix clients inside find the daemon.
const DaemonSocketInside = "/nix/var/nix/daemon-socket/socket"

// nixConfInside is the sandbox's whole Nix configuration: the CLI and
// flakes, nothing a daemon would be sent.
const nixConfInside = "# claude-sandbox: Nix inside this sandbox talks to a gateway that forwards to the host's daemon\n" +
	"# what the sandbox may ask (claude-sandbox log shows its decisions). Store settings set here\n" +
	"# would be sent to the daemon with every request, and refused.\n" +
	"experimental-features = nix-command flakes\n"

// HostDaemonSocket is the host's Nix daemon socket, as Nix itself finds it.
func HostDaemonSocket(rt *Runtime) string {
	if sock, ok := rt.lookupEnv("NIX_DAEMON_SOCKET_PATH"); ok && filepath.IsAbs(sock) {
		return sock
	}
	return DaemonSocketInside
}

// nixConfDir is the host's NIX_CONF_DIR when set: where the daemon the
// gateway forwards to reads its configuration.
func nixConfDir(rt *Runtime) string {
	if dir, ok := rt.lookupEnv("NIX_CONF_DIR"); ok && filepath.IsAbs(dir) {
		return dir
	}
	return ""
}

// planNixGateway decides whether the sandbox gets the gateway: when asked
// (not --no-nix-daemon), and a host daemon listens for it to forward to.
func planNixGateway(p *Plan, rt *Runtime) {
	if !rt.NixDaemon || p.RunDir == "" {
		return
	}
	sock := HostDaemonSocket(rt)
	if st, err := os.Stat(sock); err != nil || st.Mode()&os.ModeSocket == 0 {
		return
	}
	p.NixGateway, p.NixUpstream = NixGatewaySocket(p.RunDir), sock
}

// NixMounts are the gateway's socket at the daemon's path and the
// sandbox's own nix.conf, with the variable that makes clients use the
// daemon; none when the plan has no gateway.
func NixMounts(p *Plan) ([]Mount, map[string]string) {
	mounts := []Mount{{Kind: File, Dest: "/etc/nix/nix.conf", Data: []byte(nixConfInside), Mode: 0o644}}
	if p.NixGateway == "" {
		return mounts, nil
	}
	mounts = append(mounts, Mount{Kind: Bind, Source: p.NixGateway, Dest: DaemonSocketInside})
	return mounts, map[string]string{"NIX_REMOTE": "daemon"}
}

// HostEtcMounts binds the host /etc entries the closure lists, read-only
// and only where present — all but the host's Nix configuration (NixMounts
// gives the sandbox its own).
func HostEtcMounts(m *manifest.Manifest) []Mount {
	var out []Mount
	for _, name := range m.HostEtc {
		if name == "nix" {
			continue
		}
		etc := filepath.Join("/etc", name)
		out = append(out, Mount{Kind: ROBind, Source: etc, Dest: etc, Optional: true})
	}
	return out
}
