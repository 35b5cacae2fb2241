//go:build !(linux || darwin || dragonfly || freebsd || netbsd || openbsd)

package reactor

import "errors"

// Platforms without epoll or kqueue (Windows, and the rarer Unixes) run
// the portable backend only. conn's descriptor path is never taken there
// (every connection is portable), but it must compile.

const nativeReactor = ""

func newNativeBackend() (backend, error) {
	return nil, errors.New("reactor: no native reactor on this platform")
}

// iovec stands in for writev's buffer descriptor.
type iovec struct{}

// fdErrno stands in for the errors the descriptor path compares with.
type fdErrno int

func (e fdErrno) Error() string { return "reactor: no descriptor I/O on this platform" }

const (
	errAgain fdErrno = 1
	errIntr  fdErrno = 2
	errNoFD  fdErrno = 3
)

func fdWrite(int, []byte) (int, error)              { return 0, errNoFD }
func fdWritev(int, [][]byte, *[]iovec) (int, error) { return 0, errNoFD }
func fdShutdownWrite(int)                           {}
func fdShutdown(int)                                {}
func fdClose(int)                                   {}
