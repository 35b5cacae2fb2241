package reactor

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// epollReads is Readiness on Linux: the waiting sockets are in an epoll
// set of their own, one-shot and level-triggered, so that bytes that came
// before the socket was added are seen too. The sockets stay net.Conns in
// the Go runtime's poller as well (a descriptor may be in several epoll
// sets); the read itself is one non-blocking read(2) through the
// connection's RawConn, so the runtime's own state of the socket stays
// right.
type epollReads struct {
	epfd   int
	wakefd int

	mu     sync.Mutex
	waits  map[int32]*pendingRead // by descriptor; guarded by mu
	closed bool                   // guarded by mu
	done   chan struct{}
}

type pendingRead struct {
	rc       syscall.RawConn
	p        []byte
	deadline time.Time
	cb       ReadCallback
}

// expireEvery is how often the waiting reads' deadlines are checked: a
// read gives up at most this late.
const expireEvery = 100 * time.Millisecond

func newEpollReads() (*epollReads, error) {
	fd, wake, err := newEpollWithWake()
	if err != nil {
		return nil, err
	}
	e := &epollReads{epfd: fd, wakefd: wake, waits: map[int32]*pendingRead{}, done: make(chan struct{})}
	go e.run()
	return e, nil
}

// read adds nc to the set. It reports false when nc is not a socket this
// can wait for (the caller then waits on a goroutine).
func (e *epollReads) read(nc net.Conn, p []byte, deadline time.Time, cb ReadCallback) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		cb.ReadDone(0, err)
		return true
	}
	w := &pendingRead{rc: rc, p: p, deadline: deadline, cb: cb}
	// The bytes are often there already (a client sends its request as
	// soon as it is connected, and a busy server accepts late): then they
	// are read at once, without the round trip through the set.
	if !e.readNow(w) {
		e.arm(w)
	}
	return true
}

func (e *epollReads) arm(w *pendingRead) {
	fd := -1
	if err := w.rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		w.cb.ReadDone(0, err)
		return
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		w.cb.ReadDone(0, net.ErrClosed)
		return
	}
	// In the map before it is in the set, so the loop finds it.
	first := len(e.waits) == 0
	e.waits[int32(fd)] = w
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd)}
	err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	if err != nil {
		delete(e.waits, int32(fd))
	} else if first {
		// The loop may be waiting without a timeout (nothing was there
		// to expire): it must come round to watch this deadline.
		e.wakeLocked()
	}
	e.mu.Unlock()
	if err != nil {
		w.cb.ReadDone(0, os.NewSyscallError("epoll_ctl", err))
	}
}

// take removes fd's read from the map and the set; the caller owns it.
// Called with mu held.
func (e *epollReads) takeLocked(fd int32) *pendingRead {
	w := e.waits[fd]
	if w != nil {
		delete(e.waits, fd)
		_ = unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	}
	return w
}

func (e *epollReads) run() {
	defer close(e.done)
	events := make([]unix.EpollEvent, 128)
	var ready, expired []*pendingRead
	lastExpire := time.Now()
	for {
		// With nothing waiting there is nothing to expire: the loop
		// sleeps until a read is armed (arm wakes it). Waking every
		// expireEvery regardless cost an idle gateway ten wake-ups a
		// second, and a Go process's wake-up from idle costs about
		// 100 µs here (the runtime's sysmon polls at 20 µs for a
		// while after each), times a hundred processes at a million
		// sockets.
		e.mu.Lock()
		timeout := int(expireEvery / time.Millisecond)
		if len(e.waits) == 0 && !e.closed {
			timeout = -1
		}
		e.mu.Unlock()
		n, err := unix.EpollWait(e.epfd, events, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			n = 0
			e.mu.Lock()
			e.closed = true
			e.mu.Unlock()
		}
		ready = ready[:0]
		e.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd == int32(e.wakefd) {
				var b [8]byte
				_, _ = unix.Read(e.wakefd, b[:]) // level-triggered: drain it
				continue
			}
			if w := e.takeLocked(ev.Fd); w != nil {
				ready = append(ready, w)
			}
		}
		closed := e.closed
		now := time.Now()
		expired = expired[:0]
		if closed || now.Sub(lastExpire) >= expireEvery {
			lastExpire = now
			for fd, w := range e.waits {
				if closed || !now.Before(w.deadline) {
					expired = append(expired, e.takeLocked(fd))
				}
			}
		}
		e.mu.Unlock()
		for _, w := range ready {
			e.finish(w)
		}
		for _, w := range expired {
			if closed {
				w.cb.ReadDone(0, net.ErrClosed)
			} else {
				w.cb.ReadDone(0, os.ErrDeadlineExceeded)
			}
		}
		clear(ready)
		clear(expired)
		if closed {
			_ = unix.Close(e.epfd)
			_ = unix.Close(e.wakefd)
			return
		}
	}
}

// finish reads a socket the set said is readable.
func (e *epollReads) finish(w *pendingRead) {
	if !e.readNow(w) {
		e.arm(w) // readable no longer: wait again
	}
}

// readNow reads w's socket without waiting, and reports whether it called
// back; false is nothing to read yet.
func (e *epollReads) readNow(w *pendingRead) bool {
	var n int
	var rerr error
	err := w.rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), w.p)
		return true // never wait in the runtime's poller: the caller serves other sockets
	})
	switch {
	case err != nil: // closed, or its deadline passed
		w.cb.ReadDone(0, err)
	case errors.Is(rerr, unix.EAGAIN) || errors.Is(rerr, unix.EINTR):
		return false
	case rerr != nil:
		w.cb.ReadDone(0, os.NewSyscallError("read", rerr))
	case n == 0 && len(w.p) > 0:
		w.cb.ReadDone(0, io.EOF)
	default:
		w.cb.ReadDone(max(n, 0), nil)
	}
	return true
}

func (e *epollReads) close() {
	e.mu.Lock()
	already := e.closed
	e.closed = true
	if !already {
		e.wakeLocked()
	}
	e.mu.Unlock()
	<-e.done
}

// wakeLocked makes the loop's epoll_wait return; mu is held, so that the
// loop cannot close wakefd meanwhile.
func (e *epollReads) wakeLocked() {
	var one = [8]byte{1}
	_, _ = unix.Write(e.wakefd, one[:])
}
