package vm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/claude-sandbox/claude-sandbox/internal/proc"
	"github.com/claude-sandbox/claude-sandbox/launch"
	"github.com/claude-sandbox/claude-sandbox/launch/vm/vmhost"
	"github.com/claude-sandbox/claude-sandbox/supervisor/control"
)

// supervisorName is the supervisor program, installed beside this one.
const supervisorName = "claude-sandbox-supervisor"

// findSupervisor returns the supervisor program: $CLAUDE_SANDBOX_SUPERVISOR,
// else the one beside this program, else the one on PATH.
func findSupervisor(getenv func(string) (string, bool)) (string, error) {
	if p, ok := getenv("CLAUDE_SANDBOX_SUPERVISOR"); ok && filepath.IsAbs(p) {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		p := filepath.Join(filepath.Dir(exe), supervisorName)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(supervisorName); err == nil {
		return p, nil
	}
	return "", launch.NewVMStartError(supervisorName+" is not installed beside claude-sandbox",
		"install both programs (go build -o DIR ./cmd/...), or set CLAUDE_SANDBOX_SUPERVISOR to its path")
}

// startSupervised prepares the run directory and the metadata share,
// creates the control socket, and starts the VM's supervisor detached
// (its own session: a closing terminal does not end the VM under its
// other sessions). The registry record then names the supervisor, which
// lives exactly as long as the VM, and its control socket.
// What the supervisor says goes to a log in the run directory; supLog is
// this process's handle on it, which outlives the directory, for the
// error when the supervisor could not start the VM.
func startSupervised(ctx context.Context, vp *vmPlan, p *launch.Plan, rec *launch.Record) (supLog *os.File, err error) {
	sup, err := findSupervisor(os.LookupEnv)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{filepath.Dir(vp.RunDir), vp.RunDir, filepath.Join(vp.RunDir, vmEmptyDir), filepath.Join(p.StateDir, launch.StateGuest)} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, &launch.VMStartError{Reason: err.Error()}
		}
	}
	handed := false
	defer func() {
		if !handed {
			_ = os.RemoveAll(vp.RunDir)
		}
	}()
	if err := vp.writeMeta(p.Env); err != nil {
		return nil, &launch.VMStartError{Reason: "writing the metadata share: " + err.Error()}
	}
	sock := filepath.Join(vp.RunDir, control.SocketName)
	ln, err := launch.ListenUnix(sock, 0o600)
	if err != nil {
		return nil, &launch.VMStartError{Reason: err.Error()}
	}
	lnFile, err := ln.File()
	ln.Close()
	if err != nil {
		return nil, err
	}
	defer lnFile.Close()

	files := []*os.File{lnFile}
	spec := control.Spec{
		ID: rec.ID, Project: p.Project, Backend: Name, StateDir: p.StateDir, RunDir: vp.RunDir,
		LogPath:   launch.SessionLog(p.StateDir),
		Record:    filepath.Join(p.StateDir, "sandboxes", rec.ID+".json"),
		ControlFD: 3,
		VM:        vp.spec(),
	}
	// The protection's placeholders are held by the supervisor for the
	// VM's life, as for every backend, and released when it ends.
	spec.Placeholders, spec.PlaceholderRecords = p.HandPlaceholders(func(f *os.File) int {
		files = append(files, f)
		return 2 + len(files)
	})
	if e := vp.Egress; e != nil {
		// The same proxy service and rules as every backend's; its
		// listener is the agent's streams (vmhost), not a door.
		spec.Net = &control.NetSpec{Mode: e.Mode, Allow: e.Allow, Deny: e.Deny, Upstream: e.Upstream, NoProxy: e.NoProxy}
	}
	if vp.SSHAgent != "" {
		spec.SSHAgent = &control.SSHAgentSpec{Upstream: vp.SSHAgent}
	}
	if vp.secretServices != nil {
		vp.secretServices(&spec)
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer specR.Close()
	log, err := os.OpenFile(filepath.Join(vp.RunDir, "supervisor.log"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		specW.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			log.Close()
		}
	}()
	cmd := &exec.Cmd{
		Path: sup, Args: []string{supervisorName, "--id=" + rec.ID},
		Env:   []string{"PATH=/usr/bin:/bin", "LC_ALL=C"},
		Stdin: specR, Stdout: log, Stderr: log, ExtraFiles: files,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		specW.Close()
		return nil, launch.NewVMStartError("starting "+sup+": "+err.Error(), "")
	}
	handed = true
	p.HandedPlaceholders()
	go func() { _, _ = specW.Write(data); specW.Close() }()
	// Reaped here while this launch lives; by whoever inherits it after.
	go func() { _ = cmd.Wait() }()
	rec.PID = cmd.Process.Pid
	rec.PIDStart, _ = proc.StartTime(rec.PID)
	rec.Control = sock
	if err := launch.Register(p.StateDir, rec); err != nil {
		_ = cmd.Process.Kill()
		return nil, &launch.VMStartError{Reason: "registering the VM: " + err.Error()}
	}
	return log, nil
}

// spec is what the supervisor is told to run.
func (p *vmPlan) spec() *control.VMSpec {
	s := &control.VMSpec{
		QEMU: p.Args, Env: append(qemuEnv(), p.Display.Env...), RunDir: p.RunDir,
		Accel: p.Accel, AutoKVM: p.AutoKVM,
		Store: p.Store, StoreMiB: storeMiB, StoreLock: p.StoreLock, Mkfs: p.Mkfs,
		KeepBootLog: filepath.Join(p.StateDir, "vm-boot.log"),
	}
	if !filepath.IsAbs(s.Store) {
		s.Store = filepath.Join(p.RunDir, s.Store)
	}
	if p.FS == launch.FSVirtiofs {
		s.Virtiofsd = []string{p.Virtiofs, "--socket-path=" + vmhost.Virtiofsd, "-o", "source=" + p.Project, "-o", "cache=auto"}
	}
	return s
}
