package reactor

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

const nativeReactor = Epoll

// epoll is the Linux backend: one epoll instance per poller, each
// connection registered once, edge-triggered, for both read and write, so
// that there is no epoll_ctl per write.
type epoll struct {
	fdLoop
	epfd int
	// wakefd is an eventfd in the epoll set, so that stopping does not wait
	// for epoll_wait's timeout.
	wakefd int
}

func newNativeBackend() (backend, error) {
	fd, wake, err := newEpollWithWake()
	if err != nil {
		return nil, err
	}
	return &epoll{fdLoop: newFDLoop(), epfd: fd, wakefd: wake}, nil
}

// newEpollWithWake makes an epoll instance with an eventfd in it, whose
// write interrupts epoll_wait.
func newEpollWithWake() (epfd, wakefd int, err error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return -1, -1, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(fd)
		return -1, -1, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(fd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		_ = unix.Close(fd)
		_ = unix.Close(wake)
		return -1, -1, err
	}
	return fd, wake, nil
}

func (e *epoll) open(c *Conn, nc net.Conn) error { return openFD(c, nc) }

func (e *epoll) watch(_ *Poller, c *Conn) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: c.fd}
	return unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, int(c.fd), &ev)
}

// wake interrupts epoll_wait.
func (e *epoll) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(e.wakefd, one[:])
}

func (e *epoll) close() {
	_ = unix.Close(e.epfd)
	_ = unix.Close(e.wakefd)
}

// run waits for readiness until done is closed.
func (e *epoll) run(p *Poller, done <-chan struct{}) {
	events := make([]unix.EpollEvent, 256)
	for {
		select {
		case <-done:
			return
		default:
		}
		n, err := unix.EpollWait(e.epfd, events, int(e.waitTimeout()/time.Millisecond))
		if err != nil && err != unix.EINTR {
			p.r.log.Error().Err(err).Msg("epoll_wait")
			return
		}
		now := time.Now()
		p.woke(now)
		e.readAgain(p)
		for i := 0; i < n; i++ {
			ev := events[i]
			if int(ev.Fd) == e.wakefd {
				var b [8]byte
				_, _ = unix.Read(e.wakefd, b[:])
				continue
			}
			c := p.lookup(int(ev.Fd))
			if c == nil {
				continue
			}
			if ev.Events&unix.EPOLLOUT != 0 {
				p.flushSafely(c)
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				e.readSafely(p, c)
			}
		}
		p.scanDue()
	}
}
