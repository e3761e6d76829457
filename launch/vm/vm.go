// Package vm is the QEMU backend: a NixOS guest booted straight from the
// closure's kernel and initrd. The launcher renders the launch core's
// typed plan into QEMU's command line (the project and the user's
// directories as 9p or virtiofs shares the guest's fstab declares, the
// agent's virtio-serial port, the guest's Nix store disk, no network
// card), writes the run's metadata share, and hands the VM to a
// supervisor (claude-sandbox-supervisor, package vmhost), which owns QEMU
// for the VM's life. Every session, the first included, runs through that
// supervisor: the launcher relays its terminal to a session of the guest
// agent (package agent) and exits with its command's status. What crosses
// into the guest is the core's decision.
package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/agent"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/vmhost"
	"github.com/claude-sandbox/claude-sandbox/manifest"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// Name is the backend's name.
const Name = "vm"

// stopGrace: how long a graceful power-down may take before QEMU is
// told to quit (`stop`).
var stopGrace = 30 * time.Second

// Backend is the QEMU backend.
type Backend struct{}

func (Backend) Name() string { return Name }

func (Backend) Traits() launch.Traits {
	return launch.Traits{
		NetworkInClosure:          true,
		SessionsThroughSupervisor: true,
		SecretBroker:              true,
		Protects:                  true,
		Persistence:               "What persists after the VM ends: the project directory, ~/.claude, ~/.local (kept per project) and the guest's Nix store (nix-build, nix profile: kept per project). Everything else in the guest is discarded.",
	}
}

// Check: nothing to check before a build; the accelerator is chosen when
// the start is planned.
func (Backend) Check(*launch.Runtime) error { return nil }

// Plan decides the guest's shares, the sandbox's environment and QEMU's
// command line.
func (Backend) Plan(p *launch.Plan, m *manifest.Manifest, rt *launch.Runtime) error {
	vp, err := planVMRun(m, rt, p.ID)
	if err != nil {
		return err
	}
	env, err := guestEnv(m, rt, vp.Home, vp.User)
	if err != nil {
		return err
	}
	env = launch.MergeEnv(env, vp.extraEnv(), vp.planSecrets(p, rt))
	p.Env, p.Mounts, p.Detail = env, append(vp.Shares, vp.Protected...), vp
	p.Protected = vp.ProtectedList
	// The guest builds with a Nix daemon of its own, on its own store: the
	// host's daemon (and the gateway to it) is not for it.
	p.NixGateway, p.NixUpstream = "", ""
	p.Prepare = append(p.Prepare, vp.Prepare...)
	p.Invocation = &launch.Invocation{Path: vp.QEMU, Args: vp.Args, Env: append(qemuEnv(), vp.Display.Env...)}
	return nil
}

// planSecrets places what the core's plan made of the launch's secrets
// (nothing unless SecretBroker is among the traits): the supervisor
// writes the trust files and Claude Code's login with placeholders into
// the metadata share, which is all of the run directory the guest sees,
// and the guest agent binds them where every backend has them. It
// returns the variables the sandbox gets: the placeholders and the trust
// variables.
func (vp *vmPlan) planSecrets(p *launch.Plan, rt *launch.Runtime) map[string]string {
	meta := filepath.Join(vp.RunDir, vmMetaDir)
	login := launch.ClaudeLoginMounts(p, rt, rt.Home)
	if p.TrustDir != "" {
		p.TrustDir, p.ChromiumPolicies = filepath.Join(meta, agent.TrustDir), filepath.Join(meta, agent.ChromiumDir)
		vp.Trust = true
	}
	if len(login) > 0 {
		p.ClaudeLogin = filepath.Join(meta, agent.LoginFile)
		rel, err := filepath.Rel(rt.Home, login[0].Dest)
		if err == nil && !strings.HasPrefix(rel, "..") {
			// The home's file, the core's read-only view of the host's
			// ~/.claude, and the share it comes from: the agent skips those
			// the guest does not have.
			vp.Login = []string{filepath.Join(vp.Home, rel), filepath.Join(launch.ClaudeHostView, filepath.Base(login[0].Dest))}
			if dir, err := filepath.EvalSymlinks(filepath.Dir(login[0].Dest)); err == nil && vp.Present["claude"] && vp.Sources["claude"] == dir {
				vp.Login = append(vp.Login, filepath.Join(agent.Mnt, "claude", filepath.Base(login[0].Dest)))
			}
		}
	}
	claudeJSON := filepath.Join(rt.Home, ".claude.json")
	if m := launch.ApproveKeyPlaceholder(p, rt.Home, []launch.Mount{{Kind: launch.File, Source: claudeJSON, Dest: claudeJSON}}); m[0].Data != nil {
		vp.ClaudeJSON = m[0].Data
	}
	vp.secretServices = func(s *control.Spec) { launch.SecretServices(s, p, rt) }
	_, env := launch.SecretMounts(p)
	return env
}

// qemuEnv is QEMU's whole environment: it needs nothing from the user's,
// and the sandbox's goes through the metadata share.
func qemuEnv() []string { return []string{"PATH=/usr/bin:/bin", "LC_ALL=C"} }

// Start hands the planned VM to a new supervisor and runs the launch's
// command as the VM's first session; the result is that command's status.
// The VM lives on while other sessions do.
func (Backend) Start(ctx context.Context, p *launch.Plan, rec *launch.Record) error {
	vp := p.Detail.(*vmPlan)
	if vp.Warning != "" {
		fmt.Fprintln(os.Stderr, "claude-sandbox: warning: "+vp.Warning)
	}
	sweepRunDirs(p.StateDir)
	supLog, err := startSupervised(ctx, vp, p, rec)
	if err != nil {
		return err
	}
	defer supLog.Close()
	return runSession(ctx, rec, &session{argv: p.Command, what: sessionName(p.Command), supLog: supLog, accel: vp.Accel, first: true, beforeLeave: p.BeforeLeave})
}

// Enter runs argv as a new session of a running VM, through its
// supervisor (SessionsThroughSupervisor: s holds only the record).
func (Backend) Enter(ctx context.Context, s *launch.Session, _ *launch.Runtime, argv []string) error {
	return runSession(ctx, s.Record, &session{argv: argv, what: sessionName(argv)})
}

// Stop asks the VM's supervisor to power the guest down (the power
// button, then quit, then kill); a supervisor that does not answer is
// ended itself, and QEMU dies with it.
func (Backend) Stop(ctx context.Context, rec *launch.Record) error {
	sock := controlSocket(rec)
	ctx2, cancel := context.WithTimeout(ctx, stopGrace+20*time.Second)
	reply, err := control.Once(ctx2, sock, control.Request{Op: control.OpStop, PID: os.Getpid()})
	cancel()
	if err == nil && reply.OK {
		return nil
	}
	sv, oerr := rec.Open()
	if errors.Is(oerr, proc.ErrExited) {
		return nil
	}
	if oerr != nil {
		return oerr
	}
	defer sv.Close()
	_ = sv.Signal(unix.SIGTERM)
	if sv.Wait(ctx, stopGrace+10*time.Second) {
		return nil
	}
	_ = sv.Signal(unix.SIGKILL)
	if sv.Wait(ctx, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("the VM's supervisor (pid %d) did not end", rec.PID)
}

// Status is the guest's run state, accelerator and Nix store size, as
// its supervisor reports them.
func (Backend) Status(ctx context.Context, rec *launch.Record) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	reply, err := control.Once(ctx, controlSocket(rec), control.Request{Op: control.OpStatus})
	if err != nil || !reply.OK || reply.Status == nil {
		return "no answer from its supervisor"
	}
	if reply.Status.Detail == "" {
		return "starting"
	}
	return reply.Status.Detail
}

// controlSocket is a VM's control socket: recorded once the supervisor
// runs, and known from the record's id before (a launch joining a VM that
// is still starting finds it there).
func controlSocket(rec *launch.Record) string {
	if rec.Control != "" {
		return rec.Control
	}
	dir, err := launch.ProjectStatePath(rec.Project)
	if err != nil {
		return ""
	}
	return filepath.Join(launch.RunDir(dir, rec.ID), control.SocketName)
}

// sessionName names a session for the session log.
func sessionName(argv []string) string {
	if len(argv) == 0 {
		return "session"
	}
	return "exec: " + filepath.Base(argv[0])
}

// sweepRunDirs removes run directories of VMs that are gone: a
// supervisor removes its own when it ends, however the VM ended; a
// directory no live record names is a leftover of a killed one — its
// sockets must not make the next launch trip.
func sweepRunDirs(stateDir string) {
	live := map[string]bool{}
	if recs, err := launch.Running(stateDir); err == nil {
		for _, r := range recs {
			live[r.ID] = true
		}
	}
	root := filepath.Join(stateDir, launch.StateRun)
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || live[e.Name()] {
			continue
		}
		// Maybe a run being set up this instant (registered a moment
		// later): only old ones go.
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Minute {
			_ = os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}

// StoreImage is the project's guest Nix store disk.
func StoreImage(stateDir string) string {
	return filepath.Join(stateDir, launch.StateGuest, storeImageName)
}

const (
	storeImageName = "nix-store.img"
	storeLockName  = "nix-store.lock"
)

// StoreSize says how much of the host's disk a project's guest Nix store
// takes ("" when it has none).
func StoreSize(stateDir string) string {
	n, err := vmhost.StoreSize(StoreImage(stateDir))
	if err != nil {
		return ""
	}
	return vmhost.HumanSize(n)
}

// ResetStore deletes a project's guest Nix store: the next VM starts
// with an empty one (the sandbox's own closure is still there, from the
// host). Refused while a VM of the project runs.
func ResetStore(stateDir, project string) error {
	lock, err := os.OpenFile(filepath.Join(stateDir, launch.StateGuest, storeLockName), os.O_RDWR|os.O_CREATE, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no guest state at all
	}
	if err != nil {
		return err
	}
	defer lock.Close()
	if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return &StoreBusyError{Project: project}
	}
	err = os.Remove(StoreImage(stateDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// StoreBusyError: the store is in use by a running VM.
type StoreBusyError struct{ Project string }

func (e *StoreBusyError) Error() string {
	return "the guest's Nix store of " + e.Project + " is in use by a running VM"
}
func (e *StoreBusyError) Hint() string {
	return "stop it first: claude-sandbox stop --reset-store PROJECT"
}

// GuestStore is one project's guest Nix store, for doctor.
type GuestStore struct {
	Project string
	Bytes   int64
}

// GuestStores lists the guest Nix stores of this user's projects (their
// space on the host), largest first.
func GuestStores() ([]GuestStore, error) {
	root, err := launch.StateRoot()
	if err != nil {
		return nil, err
	}
	imgs, err := filepath.Glob(filepath.Join(root, "projects", "*", launch.StateGuest, storeImageName))
	if err != nil {
		return nil, err
	}
	var out []GuestStore
	for _, img := range imgs {
		n, err := vmhost.StoreSize(img)
		if err != nil {
			continue
		}
		state := filepath.Dir(filepath.Dir(img))
		project := filepath.Base(state)
		if data, err := os.ReadFile(filepath.Join(state, "path")); err == nil {
			project = strings.TrimSuffix(string(data), "\n")
		}
		out = append(out, GuestStore{Project: project, Bytes: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Bytes > out[j].Bytes })
	return out, nil
}
