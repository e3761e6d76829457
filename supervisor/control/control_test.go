package control

import (
	"context"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// A request posted without waiting is answered in order: the next Call
// reads the reply owed to it first, and a posted request that was refused
// is what that Call returns (once its own reply is read, so that the
// connection stays in step).
func TestPostThenCall(t *testing.T) {
	// A socket pair, as between a launcher and its supervisor: buffered
	// both ways (a net.Pipe would block the posting side on the reply).
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *Conn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return NewConn(c)
	}
	client, server := conn(fds[0]), conn(fds[1])
	defer client.Close()
	defer server.Close()
	go func() {
		for _, want := range []string{OpDoor, OpReady, OpDoor, OpLeave} {
			var req Request
			if err := server.Receive(context.Background(), &req); err != nil || req.Op != want {
				return
			}
			reply := Reply{OK: true}
			if req.Op == OpDoor && req.Service == "bad" {
				reply = Reply{Reason: "no service bad"}
			}
			if err := server.Send(reply); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Post(Request{Op: OpDoor, Service: "net"}, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := client.Call(ctx, Request{Op: OpReady}); err != nil || !r.OK {
		t.Fatalf("after an accepted post: %+v %v", r, err)
	}
	if err := client.Post(Request{Op: OpDoor, Service: "bad"}, nil); err != nil {
		t.Fatal(err)
	}
	r, err := client.Call(ctx, Request{Op: OpLeave})
	if err != nil || r.OK || r.Reason != "no service bad" {
		t.Fatalf("after a refused post: %+v %v (want the refusal)", r, err)
	}
	if client.posted != 0 {
		t.Fatalf("%d replies still owed", client.posted)
	}
}
