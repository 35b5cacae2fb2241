package gateway

import (
	"math"

	"github.com/nats-io/nats.go"

	"github.com/resoundhq/resound/pkg/route"
)

// runDispatcher writes each delivery it receives to the channel's local
// subscribers. The frame arrives encoded; the same bytes go to every
// socket, with no copy and no allocation per subscriber.
func (s *Server) runDispatcher(in <-chan *nats.Msg, done <-chan struct{}) {
	for {
		var m *nats.Msg
		select {
		case m = <-in:
		case <-done:
			return
		}
		env, err := route.ParseDelivery(m.Data)
		if err != nil {
			s.log.Warn().Str("subject", m.Subject).Msg("dropping malformed delivery")
			continue
		}
		ch := s.hub.lookup(m.Subject)
		if ch == nil {
			continue // the last subscriber left while this was in flight
		}
		if ch.seen(env.ID()) {
			s.prom.Duplicates.Inc()
			continue
		}
		frame := env.Frame
		exA, exB, hasExclude := parseSocketID(env.ExcludeSocketID)
		n := 0
		ch.mu.RLock()
		presenceRev := uint64(0)
		if env.Event == route.EventPresence {
			presenceRev = env.Seq
		}
		for c, snapshotRev := range ch.subs {
			if hasExclude && c.sidA == exA && c.sidB == exB {
				continue
			}
			if presenceRev != 0 && presenceRev <= snapshotRev {
				continue // the member list this subscriber got already has it
			}
			c.write(frame)
			n++
		}
		ch.mu.RUnlock()
		s.metrics.deliveries.Add(int64(n))
		s.prom.Deliveries.Add(float64(n))
	}
}

// parseSocketID reads "a.b" without allocating.
func parseSocketID(b []byte) (a, bb uint64, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	var v [2]uint64
	part, digits := 0, 0
	for _, c := range b {
		switch {
		case c == '.' && part == 0 && digits > 0:
			part, digits = 1, 0
		case c >= '0' && c <= '9':
			d := uint64(c - '0')
			if v[part] > (math.MaxUint64-d)/10 {
				return 0, 0, false // overflows; real ids have at most 10 digits
			}
			v[part] = v[part]*10 + d
			digits++
		default:
			return 0, 0, false
		}
	}
	if part != 1 || digits == 0 {
		return 0, 0, false
	}
	return v[0], v[1], true
}
