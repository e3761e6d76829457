package launch

import (
	"context"
	"errors"

	"github.com/claude-sandbox/claude-sandbox/manifest"
)

// The container (systemd-nspawn) backend. Owned by the container work.

var errContainerNotImplemented = errors.New("the container backend is not implemented yet")

func planContainer(m *manifest.Manifest, rt *Runtime) (*Invocation, error) {
	return nil, errContainerNotImplemented
}

func startContainer(ctx context.Context, m *manifest.Manifest, rt *Runtime) error {
	return errContainerNotImplemented
}

func enterContainer(ctx context.Context, rec *Record, rt *Runtime) error {
	return errContainerNotImplemented
}

func stopContainer(ctx context.Context, rec *Record) error {
	return errContainerNotImplemented
}
