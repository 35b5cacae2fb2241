package loadgen

import (
	"bytes"
	"strconv"

	"github.com/resoundhq/resound/protocol"
)

// The Centrifugo replies, handled on the epoll poller (Linux only, as the
// poller is; run_other.go says so elsewhere).

// onCentrifugo handles one WebSocket message from Centrifugo: one reply,
// or several, one per line.
func (p *poller) onCentrifugo(c *conn, m []byte, delivered *int64) bool {
	for len(m) > 0 {
		line := m
		if i := bytes.IndexByte(m, '\n'); i >= 0 {
			line, m = m[:i], m[i+1:]
		} else {
			m = nil
		}
		if len(bytes.TrimSpace(line)) > 0 && !p.onCentrifugoReply(c, line, delivered) {
			return false
		}
	}
	return true
}

func (p *poller) onCentrifugoReply(c *conn, m []byte, delivered *int64) bool {
	r := parseCentrifugo(m)
	switch r.kind {
	case cfPing:
		p.st.pings++
		return p.send(c, protocol.OpText, centrifugoPong)
	case cfConnect:
		if !p.onEstablished(c) {
			return true
		}
		p.tmp = appendCentrifugoSubscribe(p.tmp[:0], p.r.names[c.ch])
		return p.send(c, protocol.OpText, p.tmp)
	case cfSubscribe:
		return p.onSubscribed(c, subPrimary)
	case cfPub:
		if c.state == stSubscribed {
			p.onLoad(c, m, delivered)
		}
	case cfError:
		kind := "centrifugo_error_" + strconv.Itoa(r.code)
		if c.state < stSubscribed {
			p.lose(c, kind)
			return false
		}
		p.st.failures[kind]++
	case cfUnsubscribe:
		// Still connected, but no longer receiving: the missing events
		// show it; this says why.
		p.st.failures["centrifugo_unsubscribed"]++
	case cfMalformed:
		p.st.failures["centrifugo_malformed"]++
	}
	return true
}
