// Package tty is the one place that talks to terminals: whether a
// descriptor is one, raw mode and back, and window sizes. It opens no
// terminal and starts nothing.
package tty

import (
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// IsTerminal says whether fd is a terminal.
func IsTerminal(fd int) bool { return term.IsTerminal(fd) }

// MakeRaw puts the terminal fd in raw mode (cfmakeraw(3): no echo, no line
// editing, no signals from keys, 8-bit bytes) and returns what restores it.
// Keys, Ctrl-C included, then reach whatever reads the terminal.
func MakeRaw(fd int) (restore func(), err error) {
	st, err := term.MakeRaw(fd)
	if err != nil {
		return nil, err
	}
	return func() { _ = term.Restore(fd, st) }, nil
}

// Size returns a terminal's rows and columns; ok is false when fd is not a
// terminal or its size is unknown (0 columns).
func Size(fd int) (rows, cols int, ok bool) {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 {
		return 0, 0, false
	}
	return int(ws.Row), int(ws.Col), true
}

// CopySize gives terminal to the window size of terminal from (a pty the
// size of the user's terminal).
func CopySize(from, to int) {
	if ws, err := unix.IoctlGetWinsize(from, unix.TIOCGWINSZ); err == nil {
		_ = unix.IoctlSetWinsize(to, unix.TIOCSWINSZ, ws)
	}
}
