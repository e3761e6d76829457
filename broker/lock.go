package broker

import (
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"time"
)

// Claude Code serialises refreshes of its login with proper-lockfile
// (an npm package): the lock is a directory made with mkdir(2), its
// holder touches it every stale/2, and a lock untouched for stale (10 s
// in Claude Code) is taken over. hostLock speaks that protocol, so the
// broker's refresh and a host session's never overlap.
const (
	lockStale  = 10 * time.Second
	lockUpdate = lockStale / 2
)

// hostLock takes the lock directory path, waiting while another holder
// keeps it fresh, until ctx ends. release gives it back.
func hostLock(ctx context.Context, path string) (release func(), err error) {
	for {
		err := os.Mkdir(path, 0o755)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		if st, serr := os.Stat(path); serr == nil && time.Since(st.ModTime()) > lockStale {
			// Its holder died: take it over, as proper-lockfile does.
			_ = os.Remove(path)
			continue
		}
		wait := time.Second + rand.N(time.Second)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(lockUpdate)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				_ = os.Chtimes(path, now, now)
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		_ = os.Remove(path)
	}, nil
}
