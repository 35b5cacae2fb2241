package gateway

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/metrics"
	"github.com/resoundhq/resound/protocol"
)

// limitLogPeriod is how often a bound that keeps biting may write its
// warn line: often enough to be seen, too seldom for an attacker to fill
// the disk with it. resound_limit_hits_total counts every bite.
const limitLogPeriod = 10 * time.Second

// limitLoggers holds one sampled logger per bound, built once by New and
// only read after.
type limitLoggers map[metrics.Limit]zerolog.Logger

func newLimitLoggers(log zerolog.Logger) limitLoggers {
	out := make(limitLoggers, len(metrics.Limits))
	for _, l := range metrics.Limits {
		out[l] = log.Sample(&zerolog.BurstSampler{Burst: 1, Period: limitLogPeriod}).With().Str("limit", string(l)).Logger()
	}
	return out
}

// limitHit counts one bite of a bound and logs it, at most once per
// limitLogPeriod for each bound. c, when set, is the connection it bit.
func (s *Server) limitHit(l metrics.Limit, c *conn) {
	s.prom.LimitHit(l)
	lg, ok := s.limitLogs[l]
	if !ok {
		return
	}
	if ev := lg.Warn(); ev != nil {
		if c != nil {
			ev = ev.Str("app_id", c.app.ID).Str("socket_id", c.socketID())
		}
		ev.Msg("limit reached (logged at most every 10 s; resound_limit_hits_total counts each)")
	}
}

// recovered handles a panic caught at an edge that handles client input:
// it is logged with its stack and counted, and the connection concerned,
// if any, is closed with 1011. The process goes on: one connection's bad
// input must not take every other connection down with it.
func (s *Server) recovered(where string, r any, c *conn) {
	s.prom.Panics.WithLabelValues(where).Inc()
	ev := s.log.Error().Str("where", where).Str("panic", fmt.Sprint(r)).Bytes("stack", debug.Stack())
	if c != nil {
		ev = ev.Str("app_id", c.app.ID).Str("socket_id", c.socketID())
	}
	ev.Msg("recovered from a panic")
	if c != nil {
		c.closeWith(protocol.CloseInternalError, "Internal server error")
	}
}

// recoverNATS, deferred in a NATS message handler, keeps a panic there
// from killing the NATS connection's delivery goroutine.
func (s *Server) recoverNATS() {
	if r := recover(); r != nil {
		s.recovered(metrics.PanicNATS, r, nil)
	}
}

// recoverHTTP answers 500 for a handler that panicked, logging and counting
// it. net/http would recover too, but silently, into its own log.
func (s *Server) recoverHTTP(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.recovered(metrics.PanicHTTP, v, nil)
				w.Header().Set("Connection", "close")
				http.Error(w, `{"error":"Internal server error."}`, http.StatusInternalServerError)
			}
		}()
		faultOnHTTPRequest(r)
		h.ServeHTTP(w, r)
	})
}
