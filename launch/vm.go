package launch

import (
	"context"
	"errors"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The vm (QEMU) backend. Owned by the vm work.

var errVMNotImplemented = errors.New("the vm backend is not implemented yet")

func planVM(m *manifest.Manifest, rt *Runtime) (*Invocation, error) {
	return nil, errVMNotImplemented
}

func startVM(ctx context.Context, m *manifest.Manifest, rt *Runtime) error {
	return errVMNotImplemented
}

func enterVM(ctx context.Context, rec *Record, rt *Runtime) error {
	return errVMNotImplemented
}

func stopVM(ctx context.Context, rec *Record) error {
	return errVMNotImplemented
}
