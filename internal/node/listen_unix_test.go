//go:build unix

package node

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// An accepted client socket has no TCP keep-alive: the Pusher ping finds
// dead peers, and a probe per idle socket every 15 s costs the kernel work
// in proportion to the sockets held.
func TestPublicListenerTurnsKeepAliveOff(t *testing.T) {
	ln, err := listenPublic("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	raw, err := server.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var on int
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		on, sockErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	}); err != nil {
		t.Fatal(err)
	}
	if sockErr != nil {
		t.Fatal(sockErr)
	}
	if on != 0 {
		t.Fatalf("SO_KEEPALIVE = %d on an accepted socket, want 0", on)
	}
}
