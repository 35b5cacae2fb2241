package loadgen

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/resoundhq/resound/protocol"
)

// Centrifugo (https://centrifugal.dev) has its own protocol, so that the
// same workloads can run against it: its JSON protocol over
// {prefix}/connection/websocket, and its server HTTP API for the events.
//
// A connection sends {"id":1,"connect":{...}} once upgraded; the connect
// reply stands for pusher:connection_established. It then sends
// {"id":2,"subscribe":{"channel":...}}; the subscribe reply stands for
// subscription_succeeded. Publications arrive as
// {"push":{"channel":...,"pub":{"data":{"seq":N,"ts":T},...}}}, the data
// being the object the trigger published, so sequence and latency are
// read exactly as for Pusher events. The server pings with an empty
// reply {} and expects {} back. One WebSocket message may carry several
// replies, one per line.

const centrifugoWSPath = "/connection/websocket"

var (
	centrifugoConnect = []byte(`{"id":1,"connect":{"name":"resound-loadgen"}}`)
	centrifugoPong    = []byte(`{}`)
)

func appendCentrifugoSubscribe(dst []byte, channel string) []byte {
	dst = append(dst, `{"id":2,"subscribe":{"channel":`...)
	dst = protocol.AppendString(dst, channel)
	return append(dst, "}}"...)
}

// cfKind is what one Centrifugo reply is, as far as the load generator
// cares.
type cfKind uint8

const (
	cfOther       cfKind = iota
	cfPing               // {}: the server's ping
	cfConnect            // the connect result
	cfSubscribe          // a subscribe result
	cfError              // an error reply (code set)
	cfPub                // a publication
	cfUnsubscribe        // the server unsubscribed the connection
	cfMalformed          // not a JSON object as Centrifugo writes them
)

type cfReply struct {
	kind cfKind
	code int // cfError
}

// parseCentrifugo classifies one reply by its top-level keys, without
// decoding it: an optional "id" first, then the field that says what the
// reply is (Centrifugo writes them in that order, and a push's "channel"
// before its kind).
func parseCentrifugo(m []byte) cfReply {
	m = bytes.TrimSpace(m)
	if string(m) == "{}" {
		return cfReply{kind: cfPing}
	}
	key, rest, ok := firstKey(m)
	if ok && string(key) == "id" {
		if rest, ok = skipNumber(rest); ok {
			key, rest, ok = firstKey(rest)
		}
	}
	if !ok {
		return cfReply{kind: cfMalformed}
	}
	switch string(key) {
	case "connect":
		return cfReply{kind: cfConnect}
	case "subscribe":
		return cfReply{kind: cfSubscribe}
	case "error":
		code, _ := intAfter(rest, keyCentrifugoCode, keyCentrifugoCode)
		return cfReply{kind: cfError, code: int(code)}
	case "push":
		key, rest, ok = firstKey(rest)
		if ok && string(key) == "channel" {
			if rest, ok = skipString(rest); ok {
				key, _, ok = firstKey(rest)
			}
		}
		if !ok {
			return cfReply{kind: cfMalformed}
		}
		switch string(key) {
		case "pub":
			return cfReply{kind: cfPub}
		case "unsubscribe":
			return cfReply{kind: cfUnsubscribe}
		}
	}
	return cfReply{kind: cfOther}
}

var (
	keyCentrifugoCode     = []byte(`"code":`)
	errCentrifugoInternal = errors.New("centrifugo: internal error")
)

// firstKey reads `[{,] "key" :` at the start of b and returns the key and
// what follows the colon.
func firstKey(b []byte) (key, rest []byte, ok bool) {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 || (b[0] != '{' && b[0] != ',') {
		return nil, nil, false
	}
	b = bytes.TrimLeft(b[1:], " \t\r\n")
	if len(b) == 0 || b[0] != '"' {
		return nil, nil, false
	}
	end := bytes.IndexByte(b[1:], '"')
	if end < 0 {
		return nil, nil, false
	}
	key, b = b[1:1+end], bytes.TrimLeft(b[2+end:], " \t\r\n")
	if len(b) == 0 || b[0] != ':' {
		return nil, nil, false
	}
	return key, b[1:], true
}

// skipNumber skips an integer value.
func skipNumber(b []byte) ([]byte, bool) {
	b = bytes.TrimLeft(b, " \t\r\n")
	i := 0
	for i < len(b) && (b[i] >= '0' && b[i] <= '9' || b[i] == '-') {
		i++
	}
	return b[i:], i > 0
}

// skipString skips a string value, escapes included.
func skipString(b []byte) ([]byte, bool) {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 || b[0] != '"' {
		return nil, false
	}
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return b[i+1:], true
		}
	}
	return nil, false
}

// centrifugoBody builds the server API request for evs: publish for one
// event, batch (sequential, so a channel's events stay in order) for
// several. data is the object {"seq":N,"ts":T}.
func (t *trigger) centrifugoBody(dst []byte, evs []pendingEvent, ts int64) (path string, b []byte) {
	one := func(dst []byte, e pendingEvent) []byte {
		dst = append(dst, `{"channel":`...)
		dst = protocol.AppendString(dst, t.names[e.ch])
		dst = append(dst, `,"data":{"seq":`...)
		dst = strconv.AppendInt(dst, e.seq, 10)
		dst = append(dst, `,"ts":`...)
		dst = strconv.AppendInt(dst, ts, 10)
		return append(dst, "}}"...)
	}
	if len(evs) == 1 && t.batch == 1 {
		return "/api/publish", one(dst, evs[0])
	}
	dst = append(dst, `{"commands":[`...)
	for i, e := range evs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"publish":`...)
		dst = one(dst, e)
		dst = append(dst, '}')
	}
	return "/api/batch", append(dst, "]}"...)
}

// centrifugoRequest is a server API call: the API key (-secret) in
// X-API-Key.
func (t *trigger) centrifugoRequest(ctx context.Context, path string, body []byte) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+t.prefix+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-API-Key", t.secret)
	return req, nil
}

// centrifugoResult checks a 200 answer: Centrifugo reports errors in the
// body ({"error":{...}}, or one per command in a batch's replies). An
// internal error (100) is worth retrying; any other means the set-up is
// wrong and ends the run.
func (t *trigger) centrifugoResult(body []byte) error {
	i := bytes.Index(body, []byte(`"error":`))
	if i < 0 {
		return nil
	}
	code, _ := intAfter(body[i:], keyCentrifugoCode, keyCentrifugoCode)
	t.fail("centrifugo_error_" + strconv.FormatInt(code, 10))
	if code == 100 {
		return errCentrifugoInternal
	}
	t.fatalMu.Do(func() {
		t.fatal = "Centrifugo's API answered " + string(body)
	})
	return errFatalStatus
}
