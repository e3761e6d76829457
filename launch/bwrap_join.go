package launch

import (
	"context"
	"errors"
)

// Joining and stopping a running bubblewrap sandbox. Owned by the
// bubblewrap work.

func enterBubblewrap(ctx context.Context, rec *Record, rt *Runtime) error {
	return errors.New("enter is not implemented for bubblewrap yet")
}

func stopBubblewrap(ctx context.Context, rec *Record) error {
	return errors.New("stop is not implemented for bubblewrap yet")
}
