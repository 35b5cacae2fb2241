// Package route names the NATS subjects that carry encoded events from the
// workers to the gateways, and the envelope around each event.
//
// A worker publishes each channel's ready-to-write WebSocket frame once, on
// that channel's delivery subject; a gateway subscribes to the subject only
// while it has a local subscriber to the channel. Core NATS (not JetStream)
// carries deliveries: the job is already durable in JetStream and is acked
// only after its deliveries are published, so redelivery covers a worker
// that dies half-way.
package route

import (
	"encoding/binary"
	"errors"
	"strings"

	"github.com/resoundhq/resound/internal/wire"
)

// DeliverPrefix starts every delivery subject.
const DeliverPrefix = wire.DeliverPrefix

// Subject is the delivery subject of a channel of an app:
// resound.deliver.<app>.<channel>, each part escaped with EscapeToken.
func Subject(appID, channel string) string {
	return DeliverPrefix + EscapeToken(appID) + "." + EscapeToken(channel)
}

// EscapeToken makes s usable as one NATS subject token. Pusher channel
// names may hold '.', which NATS uses between tokens; '*' and '>' are
// wildcards and white space ends a subject. Every byte outside a safe set
// becomes ~XX (hex); '~' itself is escaped, so the mapping is reversible
// and distinct names never share a subject.
func EscapeToken(s string) string { return Escape(s, safeByte, '~') }

// UnescapeToken reverses EscapeToken.
func UnescapeToken(t string) (string, error) { return Unescape(t, '~') }

// Escape writes s with every byte that safe refuses, and esc itself, as esc
// followed by two upper-case hex digits. The empty string becomes esc
// alone, which no other input produces. esc must be a byte safe refuses.
func Escape(s string, safe func(byte) bool, esc byte) string {
	if s == "" {
		return string(esc)
	}
	clean := true
	for i := 0; i < len(s) && clean; i++ {
		clean = s[i] != esc && safe(s[i])
	}
	if clean {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != esc && safe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte(esc)
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xF])
	}
	return b.String()
}

// Unescape reverses Escape with the same esc.
func Unescape(t string, esc byte) (string, error) {
	if t == string(esc) {
		return "", nil
	}
	if strings.IndexByte(t, esc) < 0 {
		return t, nil
	}
	out := make([]byte, 0, len(t))
	for i := 0; i < len(t); i++ {
		if t[i] != esc {
			out = append(out, t[i])
			continue
		}
		if i+2 >= len(t) {
			return "", errors.New("route: truncated escape")
		}
		hi, ok1 := unhex(t[i+1])
		lo, ok2 := unhex(t[i+2])
		if !ok1 || !ok2 {
			return "", errors.New("route: bad escape")
		}
		out = append(out, hi<<4|lo)
		i += 2
	}
	return string(out), nil
}

const hexDigits = "0123456789ABCDEF"

func safeByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '_', '-', '=', '@', ',', ';', '#':
		return true
	}
	return false
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	// Escape writes upper case only; accepting lower case too would give
	// one name two spellings.
	return 0, false
}

// Delivery is one event on one channel, ready for the gateways.
type Delivery struct {
	// Seq is the job's JetStream stream sequence, 0 for frames a gateway
	// made itself. With Event it identifies the delivery, so gateways can
	// drop a redelivered job they have already written.
	Seq uint64
	// Event is the event's index in its job (a batch holds up to 10).
	Event uint8
	// Repeat marks a delivery that may have been published before: its
	// job was delivered to a worker again (an ack lost with a NATS node),
	// or the history stream did not acknowledge it. Gateways drop it if
	// the channel has had its position or a later one, however long ago.
	Repeat bool
	// ExcludeSocketID is the connection that must not receive the event.
	ExcludeSocketID string
	// Frame is the complete WebSocket frame, written as is.
	Frame []byte
}

const envelopeVersion = 1

// ErrBadEnvelope is returned for a delivery that cannot be decoded.
var ErrBadEnvelope = errors.New("route: malformed delivery envelope")

// repeatFlag marks a repeat in the event byte (indexes are below 16, and
// EventPresence is never a repeat).
const repeatFlag = 0x40

// AppendDelivery encodes d: a version byte, the sequence (8 bytes, big
// endian), the event index (1 byte, with repeatFlag), the excluded socket
// id behind a length byte, then the frame. A binary envelope keeps decoding on the
// gateway's hot path to a few slice operations, with no allocation.
func AppendDelivery(dst []byte, d Delivery) []byte {
	sid := d.ExcludeSocketID
	if len(sid) > 255 {
		sid = "" // protocol.ValidSocketID bounds real ids far below this
	}
	dst = append(dst, envelopeVersion)
	dst = binary.BigEndian.AppendUint64(dst, d.Seq)
	event := d.Event
	if d.Repeat && event != EventPresence {
		event |= repeatFlag
	}
	dst = append(dst, event, byte(len(sid)))
	dst = append(dst, sid...)
	return append(dst, d.Frame...)
}

// Envelope is a decoded delivery; its slices alias the message.
type Envelope struct {
	Seq             uint64
	Event           uint8
	Repeat          bool
	ExcludeSocketID []byte
	Frame           []byte
}

// EventPresence marks a presence change (member_added, member_removed): Seq
// then holds the presence key's revision after the change, which a
// subscriber compares with the revision of its subscription's snapshot.
const EventPresence uint8 = 255

// ID identifies the delivery among a channel's deliveries: the job's
// sequence and the event's index. It is 0 for gateway-made frames.
func (e Envelope) ID() uint64 {
	if e.Seq == 0 || e.Event == EventPresence {
		return 0
	}
	return e.Seq<<4 | uint64(e.Event&0xF)
}

// ParseDelivery decodes an envelope without copying. Each slice is capped
// at its own end, so that appending to one copies instead of overwriting
// the frame behind it or whatever follows the message in its buffer.
func ParseDelivery(b []byte) (Envelope, error) {
	if len(b) < 11 || b[0] != envelopeVersion {
		return Envelope{}, ErrBadEnvelope
	}
	n := int(b[10])
	if len(b) < 11+n {
		return Envelope{}, ErrBadEnvelope
	}
	event, repeat := b[9], false
	if event != EventPresence && event&repeatFlag != 0 {
		event, repeat = event&^repeatFlag, true
	}
	return Envelope{Seq: binary.BigEndian.Uint64(b[1:9]), Event: event, Repeat: repeat, ExcludeSocketID: b[11 : 11+n : 11+n], Frame: b[11+n : len(b) : len(b)]}, nil
}
