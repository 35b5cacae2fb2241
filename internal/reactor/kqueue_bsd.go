//go:build darwin || dragonfly || freebsd || netbsd || openbsd

package reactor

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

const nativeReactor = Kqueue

// kqueue is the backend of macOS and the BSDs, the same model as epoll:
// one kqueue per poller, each connection registered once for read and
// write with EV_CLEAR (edge-triggered), so that there is no kevent change
// per write. A pipe in the set wakes it.
type kqueue struct {
	fdLoop
	kq int
	// wakeR and wakeW are a pipe: a byte written to wakeW makes kevent
	// return. A pipe rather than EVFILT_USER, which OpenBSD lacks.
	wakeR, wakeW int
}

func newNativeBackend() (backend, error) {
	kq, err := unix.Kqueue()
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(kq)
	var pipe [2]int
	if err := unix.Pipe(pipe[:]); err != nil {
		_ = unix.Close(kq)
		return nil, err
	}
	k := &kqueue{fdLoop: newFDLoop(), kq: kq, wakeR: pipe[0], wakeW: pipe[1]}
	for _, fd := range pipe {
		unix.CloseOnExec(fd)
		if err := unix.SetNonblock(fd, true); err != nil {
			k.close()
			return nil, err
		}
	}
	var ev [1]unix.Kevent_t
	unix.SetKevent(&ev[0], k.wakeR, unix.EVFILT_READ, unix.EV_ADD|unix.EV_CLEAR)
	if _, err := unix.Kevent(kq, ev[:], nil, nil); err != nil {
		k.close()
		return nil, err
	}
	return k, nil
}

func (k *kqueue) open(c *Conn, nc net.Conn) error { return openFD(c, nc) }

func (k *kqueue) watch(_ *Poller, c *Conn) error {
	var ev [2]unix.Kevent_t
	unix.SetKevent(&ev[0], int(c.fd), unix.EVFILT_READ, unix.EV_ADD|unix.EV_CLEAR)
	unix.SetKevent(&ev[1], int(c.fd), unix.EVFILT_WRITE, unix.EV_ADD|unix.EV_CLEAR)
	_, err := unix.Kevent(k.kq, ev[:], nil, nil)
	return err
}

func (k *kqueue) wake() {
	var one = [1]byte{1}
	_, _ = unix.Write(k.wakeW, one[:])
}

func (k *kqueue) close() {
	_ = unix.Close(k.kq)
	_ = unix.Close(k.wakeR)
	_ = unix.Close(k.wakeW)
}

// run waits for readiness until done is closed. Closing a descriptor
// removes its events from the kqueue, as with epoll.
func (k *kqueue) run(p *Poller, done <-chan struct{}) {
	events := make([]unix.Kevent_t, 256)
	for {
		select {
		case <-done:
			return
		default:
		}
		timeout := unix.NsecToTimespec(int64(k.waitTimeout()))
		n, err := unix.Kevent(k.kq, nil, events, &timeout)
		if err != nil && err != unix.EINTR {
			p.r.log.Error().Err(err).Msg("kevent")
			return
		}
		now := time.Now()
		p.woke(now)
		k.readAgain(p)
		for i := 0; i < n; i++ {
			ev := events[i]
			fd := int(ev.Ident)
			if fd == k.wakeR {
				var b [64]byte
				for {
					if n, _ := unix.Read(k.wakeR, b[:]); n <= 0 {
						break
					}
				}
				continue
			}
			c := p.lookup(fd)
			if c == nil {
				continue
			}
			switch {
			case ev.Filter == unix.EVFILT_WRITE:
				if ev.Flags&unix.EV_EOF != 0 {
					k.readSafely(p, c) // reading finds the hang-up
				} else {
					p.flushSafely(c)
				}
			case ev.Filter == unix.EVFILT_READ:
				k.readSafely(p, c)
			}
		}
		p.scanDue()
	}
}
