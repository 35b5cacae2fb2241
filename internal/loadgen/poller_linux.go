package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/resoundhq/resound/protocol"
)

const (
	readBufSize   = 64 << 10
	maxReadsWake  = 8 // reads of one connection per wake-up before others get a turn
	sweepInterval = 50 * time.Millisecond
	maxOpenBurst  = 256 // connections opened per loop iteration at most
	maxHoles      = 4096
)

type connState uint8

const (
	stConnecting connState = iota
	stHandshake
	stEstablishing // upgraded, waiting for pusher:connection_established
	stSubscribing
	stSubscribed
	stClosing // our close frame is out; waiting for the server's close or EOF
	stDead
	stWaiting // -reconnect: lost after subscribing, no socket, reconnecting at mark
)

var stateNames = [...]string{"connect", "handshake", "established", "subscribe", "subscribed", "closing", "dead", "waiting"}

// span is a run of sequence numbers, lo..hi inclusive.
type span struct{ lo, hi int64 }

// conn is one client connection. It is touched only by its poller.
//
// # How a connection's events are counted
//
// The events of a channel carry sequence numbers 1, 2, 3… in the order
// their requests were acknowledged (a channel's requests go one at a
// time). At the end of the run, S is the number acknowledged on the
// channel. A subscription of the connection (an epoch) starts when
// subscription_succeeded arrives; base is then the highest sequence number
// already put in a request (trigger.issued). The server registers the
// subscription before it answers, so every event above base that is
// acknowledged must reach the connection; those at or below base may or
// may not.
//
// Without -reconnect a connection has one epoch, whose base is 0 unless it
// subscribed only after sending began (sending waits until every
// connection has subscribed or failed, so normally it did not), and a
// connection lost before the end is only counted as dropped. With -reconnect, a subscribed connection
// that the server closes or loses opens again on the next WebSocket URL
// and subscribes again, and its epochs make up one account:
//
//   - gap: the sequence numbers after the last one it received in an
//     epoch that ended, up to the base of the next epoch (up to S if it
//     never got back), and 1..base of its first epoch. These were sent while it was
//     not subscribed, so they are not expected; any that arrive anyway are
//     counted as gap_received (and not checked for duplicates).
//   - expected: S minus the gap.
//   - deliveries: distinct expected sequence numbers received.
//   - missing: expected minus deliveries. In an epoch that ended, a number
//     below the last one received is missing, not gap: a channel's
//     events arrive in order, so it should have come first.
//
// Numbers above S (sent, not acknowledged, yet stored) are unexpected.
type conn struct {
	fd        int32 // -1 while waiting to reconnect
	ch        int32 // channel index
	idx       int32 // global connection index (picks the source address)
	tgt       int32 // WebSocket target now
	epochs    int32 // subscriptions so far
	retries   int32 // reconnection attempts since the last subscription
	state     connState
	sentClose bool
	inPending bool
	peerClose bool  // the server answered our close; waiting for its FIN
	start     int64 // unix nanos of socket()
	mark      int64 // unix nanos: subscribe sent, close sent, or churn close due
	key       [16]byte
	in        []byte // a frame cut by the network (nil almost always)
	out       []byte // bytes the socket refused (nil almost always)
	frag      []byte // a fragmented message being assembled (nil almost always)
	// Load events on the connection's channel.
	next  int64  // highest sequence number seen
	recv  uint32 // distinct sequence numbers seen
	dup   uint32
	dupRe uint32 // duplicates of events sent again (resentSet)
	// dupX counts numbers received again on a later subscription that
	// were at or below resubAt, the highest number of the channel seen or
	// skipped before it: Pusher's contract is per connection, and an
	// event sent before a subscription was made may or may not reach it
	// (see conn), so one the old connection had may come on the new one.
	dupX    uint32
	resubAt int64
	ooo     uint32
	holes   []span // sequence numbers skipped so far (nil while in order)
	// gaps are the sequence numbers sent while the connection was not
	// subscribed; gapRecv counts arrivals among them.
	gaps    []span
	gapRecv uint32
	// subs are the subscriptions of this connection's current socket
	// the server confirmed (subPrimary, subAll): with -all it is
	// subscribed (state) once both are.
	subs uint8
	// allMask has bit n-1 set once event n of the all channel arrived.
	allMask uint64
}

// The bits of conn.subs.
const (
	subPrimary = 1 << iota // the connection's own channel
	subAll                 // the all channel (-all)
)

// pollStats are a poller's results, read by the runner after it exits.
type pollStats struct {
	failures                       map[string]int64
	connect, subscribe, latency    Hist
	closedClean, pings, wsPings    int64
	completed                      int64 // churn: subscribed, then closed cleanly
	expected, delivered, missing   int64
	duplicates, outOfOrder, extra  int64
	duplicatesResent               int64
	duplicatesAcross               int64
	malformed, subscribersAtEnd    int64
	holesOverflow, subscribedTotal int64
	gap, gapReceived, reconnects   int64
	// The all channel (-all): per event (by sequence number - 1), its
	// deliveries and their times; latencies of all of them.
	all                                   [MaxAllEvents]allEvent
	allLatency                            Hist
	allSubscribed, allDup, allOOO, allOdd int64
	// phaseLatency are the latencies of each -control phase, by phase
	// number - 1.
	phaseLatency []Hist
}

// allEvent is one event of the all channel as one poller saw it.
type allEvent struct {
	deliveries          int64
	firstRecv, lastRecv int64 // unix nanos
	maxLatency          int64 // nanos from its trigger to its last receipt
}

type poller struct {
	r       *runner
	id      int
	epfd    int
	wakefd  int
	buf     []byte
	wbuf    []byte
	tmp     []byte
	events  []unix.EpollEvent
	conns   []*conn // by descriptor
	live    int
	pending []*conn // connections in a transient state, checked by sweep
	again   []*conn // connections with unread input left
	rng     *rand.Rand
	now     int64
	sas     []unix.Sockaddr // the WebSocket targets (not safe to share: connect writes into them)

	// Work: connections to open (idle, fanout) or a churn schedule.
	specs      []connSpec
	nextSpec   int
	rate       float64 // connections per second this poller opens
	rateStart  time.Time
	churnEnd   time.Time
	churnCap   int
	churnMade  int
	maxPending int
	lastSweep  time.Time
	closing    bool

	// Commands from the runner.
	closeAll atomic.Bool

	// Live counters the runner reads while the poller runs.
	attempted, established, subscribed, failed, dropped atomic.Int64
	setup, delivered, lastRecv, firstRecv, reconnects   atomic.Int64
	allDelivered                                        atomic.Int64
	// caughtUp: once the runner has published the final counts (sentFinal),
	// every connection of this poller is subscribed and has every
	// sequence number up to its channel's count, with no hole.
	caughtUp atomic.Bool

	st pollStats
}

func newPoller(r *runner, id int) (*poller, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(ep)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		_ = unix.Close(ep)
		_ = unix.Close(wake)
		return nil, err
	}
	sas := make([]unix.Sockaddr, len(r.targets))
	for i, t := range r.targets {
		sas[i] = sockaddr(t.addr.Addr(), int(t.addr.Port()))
	}
	return &poller{
		r: r, id: id, epfd: ep, wakefd: wake,
		sas:    sas,
		buf:    make([]byte, readBufSize),
		events: make([]unix.EpollEvent, 512),
		rng:    rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(id)+0x9e3779b97f4a7c15)),
		st:     pollStats{failures: map[string]int64{}},
	}, nil
}

func (p *poller) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(p.wakefd, one[:])
}

func (p *poller) shutdown() {
	_ = unix.Close(p.epfd)
	_ = unix.Close(p.wakefd)
}

// loop runs until the poller has closed all its connections after
// closeAll, or has nothing left to do.
func (p *poller) loop() {
	p.rateStart = time.Now()
	p.lastSweep = p.rateStart
	for {
		n, err := unix.EpollWait(p.epfd, p.events, p.waitTimeout())
		if err != nil && err != unix.EINTR {
			p.r.fatal("epoll_wait: " + err.Error())
			p.abortAll("poller_error")
			return
		}
		p.now = time.Now().UnixNano()
		for i := 0; i < n; i++ {
			ev := p.events[i]
			fd := int(ev.Fd)
			if fd == p.wakefd {
				var b [8]byte
				_, _ = unix.Read(p.wakefd, b[:])
				continue
			}
			if fd < len(p.conns) && p.conns[fd] != nil {
				p.handle(p.conns[fd], ev.Events)
			}
		}
		if len(p.again) > 0 {
			again := p.again
			p.again = nil
			for _, c := range again {
				// A connection lost meanwhile may be waiting, or connecting
				// again on a new socket: neither has input to read.
				if c.state != stDead && c.state != stWaiting && c.state != stConnecting {
					p.read(c, 0)
				}
			}
		}
		if p.closeAll.Load() && !p.closing {
			p.startCloseAll()
		}
		if !p.closing {
			p.openDue()
		}
		if now := time.Now(); now.Sub(p.lastSweep) >= sweepInterval {
			p.lastSweep = now
			p.now = now.UnixNano()
			p.sweep()
		}
		if p.closing && p.live == 0 {
			return
		}
	}
}

func (p *poller) waitTimeout() int {
	if len(p.again) > 0 {
		return 0
	}
	if !p.closing && p.moreToOpen() && p.setup.Load() < int64(p.maxPending) {
		var next time.Time
		if p.r.cfg.Mode == ModeChurn {
			next = p.rateStart.Add(time.Duration(float64(p.churnMade) / p.rate * float64(time.Second)))
		} else {
			next = p.rateStart.Add(time.Duration(float64(p.nextSpec) / p.rate * float64(time.Second)))
		}
		d := time.Until(next)
		if d <= 0 {
			return 0
		}
		return int(min(d, sweepInterval)/time.Millisecond) + 1
	}
	if len(p.pending) == 0 && !p.r.sentFinal.Load() && !p.closing {
		// Nothing is due until a socket has input or the runner wakes
		// the poller (closeAll, publishFinal): sleep until then rather
		// than every sweepInterval, which at fifty idle load generators
		// is a thousand wake-ups a second.
		return -1
	}
	return int(sweepInterval / time.Millisecond)
}

func (p *poller) moreToOpen() bool {
	if p.r.cfg.Mode == ModeChurn {
		return p.churnMade < p.churnCap && time.Now().Before(p.churnEnd)
	}
	return p.nextSpec < len(p.specs)
}

// openDue opens the connections the ramp (or churn rate) says are due,
// within the bound on connections being set up.
func (p *poller) openDue() {
	if !p.moreToOpen() {
		return
	}
	elapsed := time.Since(p.rateStart).Seconds()
	due := int(p.rate*elapsed) + 1
	for opened := 0; opened < maxOpenBurst && p.setup.Load() < int64(p.maxPending); opened++ {
		if p.r.cfg.Mode == ModeChurn {
			if p.churnMade >= min(due, p.churnCap) {
				return
			}
			idx := int32(p.churnMade*len(p.r.pollers) + p.id)
			p.churnMade++
			p.open(connSpec{idx: idx, ch: p.r.churnChannel(idx)})
			continue
		}
		if p.nextSpec >= min(due, len(p.specs)) {
			return
		}
		s := p.specs[p.nextSpec]
		p.nextSpec++
		p.open(s)
	}
}

// open starts one connection of the plan.
func (p *poller) open(s connSpec) {
	// In setup before attempted: the runner's setupDone reads attempted,
	// then setup, and counted as attempted and not yet in setup, the last
	// connection let the sending begin before it had subscribed.
	p.setup.Add(1)
	p.attempted.Add(1)
	c := &conn{ch: s.ch, idx: s.idx, tgt: s.tgt}
	if kind := p.connect(c); kind != "" {
		p.setup.Add(-1)
		p.failEarly(kind)
		return
	}
}

// connect starts a non-blocking connect for c to its target. It returns
// the failure kind if that failed at once.
func (p *poller) connect(c *conn) string {
	r := p.r
	start := time.Now().UnixNano()
	if r.targets[c.tgt].tls {
		return p.connectTLS(c, start)
	}
	fam := unix.AF_INET
	if !r.targets[c.tgt].addr.Addr().Is4() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errKind(err)
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if n := len(r.cfg.Sources); n > 0 {
		src := r.cfg.Sources[int(c.idx)%n]
		// Let connect pick the port, so each source address has its own
		// 64k ports per destination.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, sockaddr(src, 0)); err != nil {
			_ = unix.Close(fd)
			return "bind_" + errKind(err)
		}
	}
	err = unix.Connect(fd, p.sas[c.tgt])
	if err != nil && err != unix.EINPROGRESS {
		_ = unix.Close(fd)
		return errKind(err)
	}
	return p.watchNew(c, fd, start)
}

// watchNew puts a socket whose connect has started under the poller.
func (p *poller) watchNew(c *conn, fd int, start int64) string {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		_ = unix.Close(fd)
		return "epoll_" + errKind(err)
	}
	for fd >= len(p.conns) {
		p.conns = append(p.conns, make([]*conn, max(1024, len(p.conns)))...)
	}
	c.fd, c.start, c.state = int32(fd), start, stConnecting
	p.conns[fd] = c
	p.live++
	p.addPending(c)
	return ""
}

// redial opens a lost connection again, on another WebSocket target. The
// first attempt after a loss moves connection k on by 1 + k mod (n-1)
// targets, so that the clients of a server that went away spread evenly
// over all the others (as a load balancer spreads them) instead of all
// landing on the next one; later attempts try the next target each.
func (p *poller) redial(c *conn) {
	c.tgt = nextTarget(c, int32(len(p.sas)))
	c.retries++
	if kind := p.connect(c); kind != "" {
		p.st.failures["reconnect_"+kind]++
		p.schedule(c)
	}
}

// nextTarget is the target c tries next out of n (see redial).
func nextTarget(c *conn, n int32) int32 {
	step := int32(1)
	if c.retries == 0 && n > 2 {
		step += c.idx % (n - 1)
	}
	return (c.tgt + step) % n
}

// detach closes a lost connection's socket but keeps its account, to
// reconnect it at c.mark.
func (p *poller) detach(c *conn) {
	_ = unix.Close(int(c.fd))
	p.conns[c.fd] = nil
	p.live--
	c.fd = -1
	c.in, c.out, c.frag = nil, nil, nil
	c.sentClose, c.peerClose = false, false
	c.subs = 0
	p.schedule(c)
}

// schedule sets when a waiting connection tries again: within 100 ms at
// first (spread, as real clients are, so a storm is not one instant),
// then backing off to 2 s.
func (p *poller) schedule(c *conn) {
	c.state = stWaiting
	d := time.Duration(p.rng.Int64N(int64(100 * time.Millisecond)))
	if c.retries > 0 {
		d = min(2*time.Second, 50*time.Millisecond<<min(c.retries, 6))
	}
	c.mark = p.now + int64(d)
	p.addPending(c)
}

func (p *poller) failEarly(kind string) {
	p.failed.Add(1)
	p.st.failures[kind]++
}

func (p *poller) addPending(c *conn) {
	if !c.inPending {
		c.inPending = true
		p.pending = append(p.pending, c)
	}
}

func sockaddr(a netip.Addr, port int) unix.Sockaddr {
	if a.Is4() {
		return &unix.SockaddrInet4{Port: port, Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Port: port, Addr: a.As16()}
}

func errKind(err error) string {
	var e unix.Errno
	if !errors.As(err, &e) {
		return "error"
	}
	switch e {
	case unix.ECONNREFUSED:
		return "refused"
	case unix.ECONNRESET:
		return "reset"
	case unix.ETIMEDOUT:
		return "tcp_timeout"
	case unix.EADDRNOTAVAIL:
		return "no_local_port"
	case unix.EMFILE, unix.ENFILE:
		return "too_many_open_files"
	case unix.EPIPE:
		return "broken_pipe"
	}
	if n := unix.ErrnoName(e); n != "" {
		return strings.ToLower(n)
	}
	return "errno_" + strconv.Itoa(int(e))
}

func (p *poller) handle(c *conn, evs uint32) {
	if c.state == stConnecting {
		if evs&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		soerr, err := unix.GetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soerr != 0 {
			err = unix.Errno(soerr)
		}
		if err != nil {
			p.lose(c, errKind(err))
			return
		}
		if evs&unix.EPOLLHUP != 0 {
			p.lose(c, "hangup")
			return
		}
		c.state = stHandshake
		binary.LittleEndian.PutUint64(c.key[:8], p.rng.Uint64())
		binary.LittleEndian.PutUint64(c.key[8:], p.rng.Uint64())
		t := &p.r.targets[c.tgt]
		p.tmp = appendUpgradeRequest(p.tmp[:0], t.hostHdr, t.wsPath, p.r.cfg.Origin, encodeKey(c.key))
		p.write(c, p.tmp)
		return
	}
	if evs&unix.EPOLLOUT != 0 && len(c.out) > 0 {
		if !p.flush(c) {
			return
		}
	}
	if evs&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		p.read(c, evs)
	}
}

// read drains c into the poller's buffer and handles every whole frame.
func (p *poller) read(c *conn, evs uint32) {
	for reads := 0; ; reads++ {
		if reads == maxReadsWake {
			p.again = append(p.again, c)
			return
		}
		off := len(c.in)
		if off+4096 > len(p.buf) {
			p.buf = make([]byte, off+readBufSize)
		}
		copy(p.buf, c.in)
		n, err := unix.Read(int(c.fd), p.buf[off:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			p.lose(c, errKind(err))
			return
		}
		if n == 0 {
			p.eof(c)
			return
		}
		p.now = time.Now().UnixNano()
		c.in = nil
		total := off + n
		used, ok := p.process(c, p.buf[:total])
		if !ok {
			return
		}
		if used < total {
			rest := p.buf[used:total]
			size := len(rest)
			if c.state >= stEstablishing {
				// Room for the whole frame, so the rest needs no regrowth.
				size = max(size, min(frameLen(rest), maxFrame+16))
			}
			c.in = make([]byte, len(rest), size)
			copy(c.in, rest)
		}
		if total < len(p.buf) && evs&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) == 0 {
			// A short read drained the socket; edge-triggered epoll reports
			// the next arrival.
			return
		}
	}
}

// process handles the bytes in b; it returns how many it used, and false
// if the connection is gone.
func (p *poller) process(c *conn, b []byte) (int, bool) {
	i := 0
	if c.state == stHandshake {
		n, err := parseUpgradeResponse(b, encodeKey(c.key))
		if err != nil {
			p.lose(c, err.Error())
			return 0, false
		}
		if n == 0 {
			return 0, true
		}
		i = n
		c.state = stEstablishing
		if p.r.cfg.Protocol == ProtocolCentrifugo && !p.send(c, protocol.OpText, centrifugoConnect) {
			return i, false
		}
	}
	var delivered int64
	for i < len(b) {
		f, n, err := parseFrame(b[i:])
		if err != nil {
			p.lose(c, "protocol_error")
			return i, false
		}
		if n == 0 {
			break
		}
		i += n
		if !p.onFrame(c, f, &delivered) {
			p.addDelivered(delivered)
			return i, false
		}
	}
	p.addDelivered(delivered)
	return i, true
}

func (p *poller) addDelivered(n int64) {
	if n > 0 {
		p.delivered.Add(n)
		p.lastRecv.Store(p.now)
		p.firstRecv.CompareAndSwap(0, p.now)
	}
}

func (p *poller) onFrame(c *conn, f frame, delivered *int64) bool {
	switch f.op {
	case protocol.OpPing:
		p.st.wsPings++
		return p.send(c, protocol.OpPong, f.payload)
	case protocol.OpPong:
		return true
	case protocol.OpClose:
		code := 1005
		if len(f.payload) >= 2 {
			code = int(binary.BigEndian.Uint16(f.payload))
		}
		if c.sentClose {
			// Wait for the server to close TCP first (RFC 6455 §7.1.1), so
			// TIME_WAIT stays on its side and not on our ports.
			c.peerClose = true
			return true
		}
		// Echo the close, then let go: the server closes TCP first.
		p.tmp = p.tmp[:0]
		if code != 1005 {
			p.tmp = append(p.tmp, byte(code>>8), byte(code))
		}
		p.send(c, protocol.OpClose, p.tmp)
		if c.state == stDead {
			return false
		}
		p.lose(c, "server_close_"+strconv.Itoa(code))
		return false
	case protocol.OpText, protocol.OpBinary:
		if !f.fin {
			c.frag = append(c.frag[:0], f.payload...)
			return true
		}
		return p.onMessage(c, f.payload, delivered)
	default: // continuation
		if c.frag == nil {
			p.lose(c, "protocol_error")
			return false
		}
		c.frag = append(c.frag, f.payload...)
		if len(c.frag) > maxFrame {
			p.lose(c, "protocol_error")
			return false
		}
		if !f.fin {
			return true
		}
		msg := c.frag
		c.frag = nil
		return p.onMessage(c, msg, delivered)
	}
}

func (p *poller) onMessage(c *conn, m []byte, delivered *int64) bool {
	if p.r.cfg.Protocol == ProtocolCentrifugo {
		return p.onCentrifugo(c, m, delivered)
	}
	ev := eventName(m)
	switch string(ev) {
	case "lg":
		if p.r.allName != "" && onChannel(m, p.r.allName) {
			if c.subs&subAll != 0 {
				p.onAll(c, m)
			}
			return true
		}
		// With -all, the connection's own channel may be confirmed before
		// the all channel: its events count from then on.
		if c.subs&subPrimary != 0 && (c.state == stSubscribed || c.state == stSubscribing) {
			p.onLoad(c, m, delivered)
		}
		return true
	case endEvent:
		if n, ok := intAfter(m, keySentEsc, keySentPlain); ok && c.state == stSubscribed {
			p.r.endSent[c.ch].CompareAndSwap(-1, n)
		}
		return true
	case protocol.EventPing:
		p.st.pings++
		return p.send(c, protocol.OpText, protocol.MessagePong)
	case protocol.EventConnectionEstablished:
		if !p.onEstablished(c) {
			return true
		}
		return p.subscribe(c, m)
	case protocol.EventSubscriptionSucceeded:
		if p.r.allName != "" && onChannel(m, p.r.allName) {
			return p.onSubscribed(c, subAll)
		}
		return p.onSubscribed(c, subPrimary)
	case protocol.EventError:
		code := errorCode(m)
		if c.state < stSubscribed {
			p.lose(c, "pusher_error_"+strconv.Itoa(code))
			return false
		}
		p.st.failures["pusher_error_"+strconv.Itoa(code)]++
		return true
	case protocol.EventSubscriptionError:
		if c.state < stSubscribed {
			p.lose(c, "subscription_error")
			return false
		}
		return true
	}
	return true
}

// onEstablished moves c on from waiting for the server's greeting; false if
// it was not waiting for it. The caller then sends the subscription.
func (p *poller) onEstablished(c *conn) bool {
	if c.state != stEstablishing {
		return false
	}
	if c.epochs == 0 {
		// Connection counts and times are of first connections;
		// reconnections are counted apart.
		p.st.connect.Record(p.now - c.start)
		p.established.Add(1)
	}
	c.state = stSubscribing
	c.mark = p.now
	return true
}

// subscribe sends c's subscriptions, established being the server's
// pusher:connection_established (whose socket id a presence channel's
// auth signs): its own channel, and the all channel with -all, in one
// write.
func (p *poller) subscribe(c *conn, established []byte) bool {
	name := p.r.names[c.ch]
	p.tmp = append(p.tmp[:0], `{"event":"pusher:subscribe","data":{"channel":`...)
	p.tmp = protocol.AppendString(p.tmp, name)
	if strings.HasPrefix(name, "presence-") {
		socketID := socketIDOf(established)
		if socketID == "" {
			p.lose(c, "no_socket_id")
			return false
		}
		// Each connection is a user of its own: members = subscribers.
		data := `{"user_id":"` + strconv.Itoa(int(c.idx)) + `"}`
		sig := protocol.Sign(p.r.cfg.Secret, protocol.ChannelAuthMessage(socketID, name, data, true))
		p.tmp = append(p.tmp, `,"auth":`...)
		p.tmp = protocol.AppendString(p.tmp, p.r.cfg.Key+":"+sig)
		p.tmp = append(p.tmp, `,"channel_data":`...)
		p.tmp = protocol.AppendString(p.tmp, data)
	}
	p.tmp = append(p.tmp, "}}"...)
	m := p.rng.Uint32()
	p.wbuf = appendClientFrame(p.wbuf[:0], protocol.OpText, p.tmp, [4]byte{byte(m), byte(m >> 8), byte(m >> 16), byte(m >> 24)})
	if p.r.allName != "" {
		p.tmp = append(p.tmp[:0], `{"event":"pusher:subscribe","data":{"channel":`...)
		p.tmp = protocol.AppendString(p.tmp, p.r.allName)
		p.tmp = append(p.tmp, "}}"...)
		m = p.rng.Uint32()
		p.wbuf = appendClientFrame(p.wbuf, protocol.OpText, p.tmp, [4]byte{byte(m), byte(m >> 8), byte(m >> 16), byte(m >> 24)})
	}
	return p.write(c, p.wbuf)
}

// onSubscribed handles the server's confirmation of one of c's
// subscriptions (sub: subPrimary or subAll); false if c is gone. c is
// subscribed once all of its subscriptions are confirmed.
func (p *poller) onSubscribed(c *conn, sub uint8) bool {
	if c.state != stSubscribing || c.subs&sub != 0 {
		return true
	}
	c.subs |= sub
	switch sub {
	case subPrimary:
		// What was sent on its channel before now is its gap, from this
		// moment: its events count from here, even before the all channel
		// is confirmed.
		openGap(c, p.r.issued[c.ch].Load())
	case subAll:
		if c.epochs == 0 {
			p.st.allSubscribed++
		}
	}
	if c.subs&subPrimary == 0 || (p.r.allName != "" && c.subs&subAll == 0) {
		return true
	}
	c.state = stSubscribed
	if c.epochs == 0 {
		p.st.subscribe.Record(p.now - c.mark)
		p.setup.Add(-1)
		p.subscribed.Add(1)
	} else {
		p.st.reconnects++
		p.reconnects.Add(1)
	}
	c.epochs++
	c.retries = 0
	p.st.subscribedTotal++
	if p.r.cfg.Mode == ModeChurn {
		if p.r.cfg.ChurnHold <= 0 {
			return p.closeConn(c)
		}
		c.mark = p.now + int64(p.r.cfg.ChurnHold)
		p.addPending(c)
	}
	return true
}

// startEpoch begins a subscription of c. It expects what is sent above
// base from now on; what was sent since the last number it received is its
// gap (see conn).
func startEpoch(c *conn, base int64) {
	openGap(c, base)
	c.epochs++
	c.retries = 0
}

// openGap records as c's gap what was sent on its channel from the last
// number it received up to base, when its subscription starts (before
// c.epochs counts it). On a subscription after the first, what c had
// before may come again (resubAt).
func openGap(c *conn, base int64) {
	if c.epochs > 0 {
		c.resubAt = c.next
	}
	if base > c.next {
		c.gaps = append(c.gaps, span{c.next + 1, base})
		c.next = base
	}
}

// onAll accounts for one event of the all channel: once per connection,
// with its latency.
func (p *poller) onAll(c *conn, m []byte) {
	seq, ts, ok := loadEvent(m)
	if !ok || seq < 1 || seq > MaxAllEvents {
		p.st.allOdd++
		return
	}
	bit := uint64(1) << (seq - 1)
	if c.allMask&bit != 0 {
		p.st.allDup++
		return
	}
	if c.allMask>>(seq-1) != 0 {
		p.st.allOOO++ // a later event came first
	}
	c.allMask |= bit
	lat := p.now - ts
	e := &p.st.all[seq-1]
	e.deliveries++
	if e.firstRecv == 0 {
		e.firstRecv = p.now
	}
	e.lastRecv = max(e.lastRecv, p.now)
	e.maxLatency = max(e.maxLatency, lat)
	p.st.allLatency.Record(lat)
	p.allDelivered.Add(1)
}

// onLoad accounts for one load event: its latency and its place in the
// channel's sequence.
func (p *poller) onLoad(c *conn, m []byte, delivered *int64) {
	seq, ts, ok := loadEvent(m)
	if !ok || seq < 1 {
		p.st.malformed++
		return
	}
	switch {
	case seq > c.next:
		if seq > c.next+1 {
			if len(c.holes) < maxHoles {
				c.holes = append(c.holes, span{c.next + 1, seq - 1})
			} else {
				p.st.holesOverflow++
			}
		}
		c.next = seq
	case p.fillHole(c, seq):
		c.ooo++
	case inSpans(c.gaps, seq):
		c.gapRecv++
		return
	case p.r != nil && p.r.resent.has(int(c.ch), seq):
		c.dupRe++
		return
	case seq <= c.resubAt:
		c.dupX++
		return
	default:
		c.dup++
		return
	}
	c.recv++
	*delivered++
	p.st.latency.Record(p.now - ts)
	if p.r != nil && p.r.ctl != nil {
		if i := int(p.r.ctl.phase.Load()); i > 0 {
			for len(p.st.phaseLatency) < i {
				p.st.phaseLatency = append(p.st.phaseLatency, Hist{})
			}
			p.st.phaseLatency[i-1].Record(p.now - ts)
		}
	}
}

func inSpans(spans []span, seq int64) bool {
	for _, s := range spans {
		if seq >= s.lo && seq <= s.hi {
			return true
		}
	}
	return false
}

// fillHole removes seq from c's holes, reporting whether it was in one.
func (p *poller) fillHole(c *conn, seq int64) bool {
	for i := len(c.holes) - 1; i >= 0; i-- {
		h := c.holes[i]
		if seq < h.lo || seq > h.hi {
			continue
		}
		switch {
		case h.lo == h.hi:
			c.holes = append(c.holes[:i], c.holes[i+1:]...)
		case seq == h.lo:
			c.holes[i].lo++
		case seq == h.hi:
			c.holes[i].hi--
		default:
			c.holes = append(c.holes, span{})
			copy(c.holes[i+2:], c.holes[i+1:])
			c.holes[i] = span{h.lo, seq - 1}
			c.holes[i+1] = span{seq + 1, h.hi}
		}
		if len(c.holes) == 0 {
			c.holes = nil
		}
		return true
	}
	return false
}

// send writes one masked frame.
func (p *poller) send(c *conn, op byte, payload []byte) bool {
	m := p.rng.Uint32()
	p.wbuf = appendClientFrame(p.wbuf[:0], op, payload, [4]byte{byte(m), byte(m >> 8), byte(m >> 16), byte(m >> 24)})
	return p.write(c, p.wbuf)
}

// write writes b, keeping what the socket refuses for EPOLLOUT.
func (p *poller) write(c *conn, b []byte) bool {
	if len(c.out) > 0 {
		c.out = append(c.out, b...)
		return true
	}
	for len(b) > 0 {
		n, err := unix.Write(int(c.fd), b)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			c.out = append([]byte(nil), b...)
			return true
		}
		if err != nil {
			p.lose(c, errKind(err))
			return false
		}
		b = b[n:]
	}
	return true
}

func (p *poller) flush(c *conn) bool {
	out := c.out
	c.out = nil
	return p.write(c, out)
}

// closeConn starts a clean close: our close frame, then wait for the
// server's.
func (p *poller) closeConn(c *conn) bool {
	if c.sentClose || c.state == stDead {
		return c.state != stDead
	}
	c.sentClose = true
	if !p.send(c, protocol.OpClose, []byte{0x03, 0xE8}) {
		return false
	}
	c.state = stClosing
	c.mark = p.now
	p.addPending(c)
	return true
}

// eof handles the peer's FIN.
func (p *poller) eof(c *conn) {
	if c.sentClose {
		p.st.closedClean++
		p.destroy(c)
		return
	}
	p.lose(c, "eof_"+stateNames[c.state])
}

// lose ends a connection that failed or was dropped. With -reconnect, one
// that had subscribed is opened again instead.
func (p *poller) lose(c *conn, kind string) {
	if c.state == stDead || c.state == stWaiting {
		return
	}
	switch {
	case c.sentClose:
		// Our close was under way: whatever happened, it is closed.
		p.st.failures["close_"+kind]++
	case c.state < stSubscribed && c.epochs > 0:
		p.st.failures["reconnect_"+kind]++
	case c.state < stSubscribed:
		p.failed.Add(1)
		p.setup.Add(-1)
		p.st.failures[kind]++
	default:
		p.dropped.Add(1)
		p.st.failures[kind]++
	}
	if p.r.cfg.Reconnect && c.epochs > 0 && !c.sentClose && !p.closing {
		p.detach(c)
		return
	}
	p.destroy(c)
}

// destroy closes the descriptor and folds the connection's counts in.
func (p *poller) destroy(c *conn) {
	if c.state == stDead {
		return
	}
	p.st.duplicates += int64(c.dup)
	p.st.duplicatesResent += int64(c.dupRe)
	p.st.duplicatesAcross += int64(c.dupX)
	p.st.outOfOrder += int64(c.ooo)
	if c.sentClose && p.r.cfg.Mode == ModeChurn {
		p.st.completed++
	}
	wasWaiting := c.state == stWaiting
	c.state = stDead
	if !wasWaiting {
		_ = unix.Close(int(c.fd))
		p.conns[c.fd] = nil
		p.live--
	}
	c.in, c.out, c.frag, c.holes, c.gaps = nil, nil, nil, nil, nil
}

// startCloseAll settles the fan-out accounting of every connection that
// subscribed, then closes them all: those still being set up at once,
// the others with a close handshake.
func (p *poller) startCloseAll() {
	p.closing = true
	sent := p.r.sent
	for _, c := range p.conns {
		if c == nil {
			continue
		}
		if c.epochs > 0 && c.state != stSubscribed && sent != nil {
			p.settle(c, sent[c.ch]) // lost, and not back yet
		}
		if c.state < stSubscribed {
			p.lose(c, "aborted_"+stateNames[c.state])
			continue
		}
		if c.state == stSubscribed && sent != nil {
			p.settle(c, sent[c.ch])
		}
		p.closeConn(c)
	}
	for _, c := range p.pending {
		if c.state == stWaiting {
			if sent != nil {
				p.settle(c, sent[c.ch])
			}
			p.destroy(c)
		}
	}
}

// settle compares what c received with what was sent on its channel (see
// conn for the definitions).
func (p *poller) settle(c *conn, sent int64) {
	back := c.state == stSubscribed
	if back {
		p.st.subscribersAtEnd++
	}
	var gap int64
	for _, g := range c.gaps {
		gap += overlap(g, 1, sent)
	}
	if !back && c.next < sent {
		gap += sent - c.next // sent after it was lost
	}
	p.st.gap += gap
	p.st.gapReceived += int64(c.gapRecv)
	p.st.expected += sent - gap
	// Sequence numbers above sent were received but never acknowledged
	// (a request that timed out yet was stored): not expected, so not
	// counted as deliveries.
	var extra int64
	if c.next > sent {
		extra = c.next - sent
		for _, h := range c.holes {
			extra -= overlap(h, sent+1, c.next)
		}
		for _, g := range c.gaps {
			extra -= overlap(g, sent+1, c.next)
		}
	}
	p.st.extra += extra
	got := int64(c.recv) - extra
	p.st.delivered += got
	if miss := max(0, sent-gap-got); miss > 0 {
		p.st.missing += miss
		// Which numbers, so that a fault test's logs can be searched for
		// the event that went missing: the holes below the last one
		// received, and what never came after it.
		var spans []string
		for _, h := range c.holes {
			spans = append(spans, fmt.Sprintf("%d-%d", h.lo, min(h.hi, sent)))
		}
		if c.next < sent && back {
			spans = append(spans, fmt.Sprintf("%d-%d", c.next+1, sent))
		}
		if p.r != nil { // a poller of its own in unit tests
			p.r.log.Warn().Str("channel", p.r.names[c.ch]).Int32("conn", c.idx).Int64("missing", miss).
				Strs("spans", spans).Msg("missing deliveries")
		}
	}
}

// overlap is how many numbers of s lie in lo..hi.
func overlap(s span, lo, hi int64) int64 {
	return max(0, min(s.hi, hi)-max(s.lo, lo)+1)
}

// abortAll closes everything at once (on a fatal poller error).
func (p *poller) abortAll(kind string) {
	for _, c := range p.conns {
		if c != nil {
			p.lose(c, kind)
		}
	}
}

// sweep enforces the time limits of connections in transient states.
func (p *poller) sweep() {
	cfg := p.r.cfg
	keep := p.pending[:0]
	for _, c := range p.pending {
		switch {
		case c.state == stDead:
			c.inPending = false
			continue
		case c.state == stWaiting:
			if p.closing {
				break // startCloseAll settles it
			}
			if p.now >= c.mark {
				p.redial(c) // stays pending: set up, or waiting again
			}
		case c.state < stSubscribed:
			if p.now-c.start > int64(cfg.ConnectTimeout) {
				p.lose(c, "timeout_"+stateNames[c.state])
				if c.state == stWaiting {
					break // reconnecting: stays pending
				}
				c.inPending = false
				continue
			}
		case c.state == stSubscribed:
			if cfg.Mode != ModeChurn || cfg.ChurnHold <= 0 {
				c.inPending = false
				continue
			}
			if p.now >= c.mark {
				p.closeConn(c)
				if c.state == stDead {
					c.inPending = false
					continue
				}
			}
		case c.state == stClosing:
			if p.now-c.mark > int64(cfg.CloseGrace) {
				c.inPending = false
				if c.peerClose {
					p.st.closedClean++
				} else {
					p.st.failures["close_timeout"]++
				}
				p.destroy(c)
				continue
			}
		}
		keep = append(keep, c)
	}
	clear(p.pending[len(keep):])
	p.pending = keep
	if p.r.sentFinal.Load() && !p.closing {
		p.caughtUp.Store(p.isCaughtUp())
	}
}

// isCaughtUp tells whether every connection is subscribed and has received
// every sequence number of its channel's final count, with no hole left.
func (p *poller) isCaughtUp() bool {
	sent := p.r.sent
	for _, c := range p.pending {
		if c.state == stWaiting {
			return false
		}
	}
	for _, c := range p.conns {
		if c == nil {
			continue
		}
		if c.state == stSubscribed {
			if c.next < sent[c.ch] || len(c.holes) > 0 {
				return false
			}
		} else if c.epochs > 0 && c.state < stSubscribed {
			return false // reconnecting
		}
	}
	return true
}
