package main

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"
)

func TestInterruptContextEndsOnSignalOnceWaitedOn(t *testing.T) {
	ctx := newInterruptContext(context.Background())
	defer ctx.Stop()
	if ctx.armedCtx != nil {
		t.Fatal("signals taken over before anything waited")
	}
	done := ctx.Done() // what exec.CommandContext and the lock loops do
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("SIGINT did not end the context")
	}
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatalf("Err = %v", ctx.Err())
	}
}

func TestInterruptContextKeepsParentValuesAndCancellation(t *testing.T) {
	type key struct{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	ctx := newInterruptContext(parent)
	defer ctx.Stop()
	if ctx.Value(key{}) != "v" {
		t.Fatal("parent's value lost")
	}
	child, stop := context.WithTimeout(ctx, time.Hour)
	defer stop()
	cancel()
	select {
	case <-child.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the parent's cancellation did not reach a derived context")
	}
}
