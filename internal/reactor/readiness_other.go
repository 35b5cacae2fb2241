//go:build !linux

package reactor

import (
	"errors"
	"net"
	"time"
)

// epollReads has no epoll to wait in here: every Readiness read waits on
// a goroutine of its own (kqueue could do for the BSDs what epoll does
// for Linux; not done yet).
type epollReads struct{}

func newEpollReads() (*epollReads, error) {
	return nil, errors.New("reactor: no epoll on this platform")
}

func (*epollReads) read(net.Conn, []byte, time.Time, ReadCallback) bool { return false }
func (*epollReads) close()                                              {}
