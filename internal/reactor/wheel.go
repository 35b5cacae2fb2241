package reactor

// The scan used to walk every connection of a poller once a second, to
// run the session's timers. At a million sockets over sixty gateways that
// was a million connections a second, each one or two cache misses,
// whether or not any timer was near; a gateway holding 12,000 idle
// sockets spent a quarter of its idle CPU there. Now each open connection
// is on a wheel of the ticks ahead, in the slot of the tick its session
// asked to be looked at again (Handler.Scan's answer), and the poller
// looks only at the slot of the current tick.
//
// A destroyed connection cannot be taken off the wheel (finding it would
// need its slot, and Conn has no room left for one): it stays until its
// slot comes and is dropped then. So no connection is scheduled more than
// scanHorizon ticks ahead — one whose timer is further is looked at and
// put back — which bounds how long a destroyed one's memory is kept, at
// the cost of a look at every idle connection every scanHorizon ticks
// instead of every tick.
//
// Closing connections are not on the wheel: they wait on the poller's
// closing list, looked at every tick (they are few, and their grace is
// short).

const (
	// scanHorizon is how far ahead, in ticks (seconds), a connection can
	// be scheduled.
	scanHorizon = 8
	// wheelSlots is the wheel's size: more than scanHorizon, so that the
	// slot being run is never the one a connection is put back in.
	wheelSlots = 16
	// keepSlotCap is the largest slot array kept for reuse once run; a
	// bigger one (a burst of connects) goes back to the GC.
	keepSlotCap = 1024
)

// timerWheel holds each open connection of a poller once, in the slot of
// the tick it is next looked at. Only the poller goroutine touches it.
type timerWheel struct {
	slots [wheelSlots][]*Conn
	// at is the last tick whose slot was run; 0 before the first.
	at uint32
}

// schedule puts c in the slot of tick at, kept within (now, now +
// scanHorizon].
func (w *timerWheel) schedule(c *Conn, at, now uint32) {
	switch {
	case at <= now:
		at = now + 1
	case at-now > scanHorizon:
		at = now + scanHorizon
	}
	i := at % wheelSlots
	w.slots[i] = append(w.slots[i], c)
}

// due takes the connections of every tick after the last run, up to now,
// in order, handing each to f; f may schedule them again (always in a
// later slot). The first call only starts the count.
func (w *timerWheel) due(now uint32, f func(c *Conn)) {
	if w.at == 0 {
		w.at = now
		return
	}
	if now-w.at > wheelSlots {
		// The poller did not turn for longer than the wheel (a stopped
		// process): every slot is due, none twice.
		w.at = now - wheelSlots
	}
	for w.at != now {
		w.at++
		i := w.at % wheelSlots
		slot := w.slots[i]
		w.slots[i] = nil
		for _, c := range slot {
			f(c)
		}
		if cap(slot) <= keepSlotCap && w.slots[i] == nil {
			clear(slot)
			w.slots[i] = slot[:0]
		}
	}
}

// size is the number of entries on the wheel (tests).
func (w *timerWheel) size() int {
	n := 0
	for _, s := range w.slots {
		n += len(s)
	}
	return n
}
