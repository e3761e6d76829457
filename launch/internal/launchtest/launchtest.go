// Package launchtest holds what the launch packages' tests share: a
// hand-written manifest and fake hosts. Only tests import it.
package launchtest

import (
	"io/fs"
	"path/filepath"
	"slices"
	"time"

	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// Store is the prefix of the manifest's made-up store paths.
const Store = "/nix/store/0000000000000000000000000000000a-"

// Manifest is a hand-written bubblewrap manifest; tests set Backend and the
// sections of the others.
func Manifest() *manifest.Manifest {
	s := Store
	return &manifest.Manifest{
		Schema: 1, Backend: "bubblewrap",
		Bwrap: s + "bubblewrap/bin/bwrap", Env: s + "env", Path: []string{s + "env/bin"},
		Shell: s + "bash/bin/bash", UsrBinEnv: s + "coreutils/bin/env", Claude: s + "claude-code/bin/claude",
		NixLd:   manifest.NixLd{Loader: s + "nix-ld/libexec/nix-ld", Path: "/lib64/ld-linux-x86-64.so.2", NixLd: s + "libs/share/nix-ld/lib/ld.so", NixLdLibraryDir: s + "libs/share/nix-ld/lib"},
		HostEtc: []string{"resolv.conf", "hosts"},
	}
}

// Env is a host environment holding exactly m.
func Env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// Host is a host with the given variables, sockets, directories and files,
// for uid 1000.
func Host(vars map[string]string, sockets, dirs, files []string) launch.Host {
	kinds := map[string]fs.FileMode{}
	for _, p := range sockets {
		kinds[p] = fs.ModeSocket
	}
	for _, p := range dirs {
		kinds[p] = fs.ModeDir
	}
	for _, p := range files {
		kinds[p] = 0
	}
	return launch.Host{
		LookupEnv: Env(vars),
		Stat: func(p string) (fs.FileInfo, error) {
			if mode, ok := kinds[p]; ok {
				return fakeInfo{name: filepath.Base(p), mode: mode}, nil
			}
			return nil, fs.ErrNotExist
		},
		UID: 1000,
	}
}

type fakeInfo struct {
	name string
	mode fs.FileMode
}

func (f fakeInfo) Name() string       { return f.name }
func (f fakeInfo) Size() int64        { return 0 }
func (f fakeInfo) Mode() fs.FileMode  { return f.mode }
func (f fakeInfo) ModTime() time.Time { return time.Time{} }
func (f fakeInfo) IsDir() bool        { return f.mode.IsDir() }
func (f fakeInfo) Sys() any           { return nil }

// Index returns where seq starts in args, or -1.
func Index(args []string, seq ...string) int {
	for i := range args {
		if i+len(seq) <= len(args) && slices.Equal(args[i:i+len(seq)], seq) {
			return i
		}
	}
	return -1
}
