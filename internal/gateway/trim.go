package gateway

import (
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// A connect storm (a drained or restarted gateway's clients all coming
// back, a thousand handshakes in flight) leaves memory behind that the
// steady state does not need: the handshakes' garbage, which no collection
// reclaims while the idle connections allocate nothing, and their goroutine
// stacks and heap spans, which the runtime's background scavenger hands
// back to the kernel only slowly. Measured here (issue 13): 15,000
// subscribed sockets held 1,437 B of RSS each after a storm of 1,000
// handshakes in flight, 766 B when the same sockets came at 2,000/s.
//
// So once a storm is over the gateway collects and returns its free memory
// to the kernel (debug.FreeOSMemory) itself, once per storm: a full
// collection of a gateway's heap takes milliseconds, and a quiet gateway
// has nothing better to do with them.
const (
	// stormHandshakes is how many handshakes since the last trim make a
	// storm worth trimming after.
	stormHandshakes = 1000
	// stormOverBelow is the handshakes per tick under which a storm is
	// over (the ticker runs every second): a gateway in production always
	// has a few clients reconnecting.
	stormOverBelow = 50
	// trimEvery bounds how often the gateway trims, whatever the storms.
	trimEvery = 10 * time.Second
)

// stormTrim decides when a connect storm is over. The accept goroutine
// counts handshakes; the gateway's once-a-second ticker asks.
type stormTrim struct {
	admitted atomic.Int64 // handshakes admitted since start

	// The ticker's alone.
	prevTick  int64 // admitted at the previous tick
	trimmedAt int64 // admitted at the last trim
	lastTrim  time.Time
}

// due reports whether to trim now: a storm of handshakes came since the
// last trim, the last tick saw few, and none is in progress beyond a few.
func (t *stormTrim) due(now time.Time, inProgress int64) bool {
	cur := t.admitted.Load()
	perTick := cur - t.prevTick
	t.prevTick = cur
	if cur-t.trimmedAt < stormHandshakes || perTick >= stormOverBelow || inProgress >= stormOverBelow || now.Sub(t.lastTrim) < trimEvery {
		return false
	}
	t.trimmedAt, t.lastTrim = cur, now
	return true
}

// trimMemory returns the gateway's free memory to the kernel. It runs on a
// goroutine of its own: a collection must not hold up the ticker.
func (s *Server) trimMemory() {
	start := time.Now()
	// Two collections: the first moves the handshake pool's objects
	// (a buffer for the request head each, as many as were in flight) to sync.Pool's
	// victim cache, the second frees them; FreeOSMemory's own collection
	// is the second, and it then returns what is free.
	runtime.GC()
	debug.FreeOSMemory()
	s.prom.MemoryTrims.Inc()
	s.log.Debug().Dur("took", time.Since(start)).Msg("connect storm over: free memory returned to the kernel")
}
