package main

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// interruptContext ends on SIGINT or SIGTERM, as signal.NotifyContext does,
// but takes over those signals only when something first waits on it. A
// warm launch never waits before it execs the sandbox, and taking them over
// costs two goroutines and the OS threads the runtime starts to run them:
// half a millisecond of a 12 ms launch. Until then a signal has its default
// effect, which before the exec is the same: the process ends.
type interruptContext struct {
	context.Context // the parent, until armed: its Deadline and Value hold either way
	once            sync.Once
	armedCtx        context.Context
	stopSignals     context.CancelFunc
}

func newInterruptContext(parent context.Context) *interruptContext {
	return &interruptContext{Context: parent}
}

func (c *interruptContext) armed() context.Context {
	c.once.Do(func() {
		c.armedCtx, c.stopSignals = signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	})
	return c.armedCtx
}

func (c *interruptContext) Done() <-chan struct{} { return c.armed().Done() }
func (c *interruptContext) Err() error            { return c.armed().Err() }

// Stop gives the signals back, if they were taken.
func (c *interruptContext) Stop() {
	c.once.Do(func() {}) // never arm after this
	if c.stopSignals != nil {
		c.stopSignals()
	}
}
