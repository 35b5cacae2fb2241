package protocol

import (
	"strconv"
	"strings"
)

// Version is the Pusher protocol version Resound speaks.
const Version = 7

// Event names on the wire.
const (
	EventConnectionEstablished = "pusher:connection_established"
	EventError                 = "pusher:error"
	EventPing                  = "pusher:ping"
	EventPong                  = "pusher:pong"
	EventSubscribe             = "pusher:subscribe"
	EventUnsubscribe           = "pusher:unsubscribe"
	EventSignin                = "pusher:signin"
	EventSubscriptionError     = "pusher:subscription_error"
	EventCacheMiss             = "pusher:cache_miss"
	EventSubscriptionSucceeded = "pusher_internal:subscription_succeeded"
	EventMemberAdded           = "pusher_internal:member_added"
	EventMemberRemoved         = "pusher_internal:member_removed"

	// ClientEventPrefix starts the name of every event a client may send to
	// other clients.
	ClientEventPrefix = "client-"
	// PusherEventPrefix starts every name Pusher reserves; producers may not
	// trigger events with it.
	PusherEventPrefix = "pusher"
)

// Error codes, as Pusher's protocol documents them. The range says what
// pusher-js does on a close with that code: 4000–4099 don't reconnect,
// 4100–4199 reconnect after backing off, 4200–4299 reconnect at once.
const (
	CodeSSLOnly             = 4000
	CodeAppNotFound         = 4001
	CodeAppDisabled         = 4003
	CodeOverQuota           = 4004
	CodePathNotFound        = 4005
	CodeInvalidVersion      = 4006
	CodeUnsupportedProtocol = 4007
	CodeNoProtocol          = 4008
	CodeUnauthorized        = 4009
	CodeOverCapacity        = 4100
	CodeReconnect           = 4200
	CodePongTimeout         = 4201
	CodeInactivity          = 4202
	CodeClientRateLimit     = 4301
)

// CodeInvalidMessage answers a frame that is not a Pusher message (bad JSON,
// a field of the wrong type, an unknown pusher: event). Pusher documents no
// code for this; Reverb sends 4200 "Invalid message format" and keeps the
// connection open, and pusher-js only surfaces a pusher:error received after
// connecting as an "error" event, so Resound does the same.
const CodeInvalidMessage = CodeReconnect

// WebSocket close codes (RFC 6455 §7.4.1) Resound uses.
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	CloseInvalidPayload  = 1007
	CloseMessageTooBig   = 1009
	CloseInternalError   = 1011
	CloseReasonTooBigMsg = "Maximum message size exceeded"
)

// ValidCloseCode reports whether a close frame may carry code (RFC 6455
// §7.4): the defined codes 1000–1003 and 1007–1011, the IANA-registered
// 1012–1014, and the 3000–4999 ranges for libraries and applications.
// 1004 is reserved, and 1005, 1006 and 1015 only ever describe a close
// locally: they must never be sent, so a peer that sends one has broken
// the protocol, and echoing it would be the server breaking it too.
func ValidCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// AppendConnectionEstablished appends the first message of every
// connection. activity_timeout is in seconds and must be non-zero:
// pusher-js fails the handshake without it.
func AppendConnectionEstablished(dst []byte, socketID string, activityTimeoutSeconds int) []byte {
	inner := make([]byte, 0, 64)
	inner = append(inner, `{"socket_id":`...)
	inner = AppendString(inner, socketID)
	inner = append(inner, `,"activity_timeout":`...)
	inner = strconv.AppendInt(inner, int64(activityTimeoutSeconds), 10)
	inner = append(inner, '}')
	dst = append(dst, `{"event":"pusher:connection_established","data":`...)
	dst = AppendString(dst, string(inner))
	return append(dst, '}')
}

// AppendError appends a pusher:error. Like Reverb, data is a JSON-encoded
// string (Pusher's own examples show an object; pusher-js accepts both).
func AppendError(dst []byte, code int, message string) []byte {
	inner := make([]byte, 0, 32+len(message))
	inner = append(inner, `{"code":`...)
	inner = strconv.AppendInt(inner, int64(code), 10)
	inner = append(inner, `,"message":`...)
	inner = AppendString(inner, message)
	inner = append(inner, '}')
	dst = append(dst, `{"event":"pusher:error","data":`...)
	dst = AppendString(dst, string(inner))
	return append(dst, '}')
}

// AppendSubscriptionSucceeded appends the reply to a successful
// subscription to a public or private channel.
func AppendSubscriptionSucceeded(dst []byte, channel string) []byte {
	dst = append(dst, `{"event":"pusher_internal:subscription_succeeded","channel":`...)
	dst = AppendString(dst, channel)
	return append(dst, `,"data":"{}"}`...)
}

// AppendSubscriptionError appends a channel-scoped pusher:subscription_error.
// Reverb sends only a channel-less pusher:error, which never reaches
// laravel-echo's .error() nor pusher-js's channel listeners; this event,
// shaped like the one pusher-js raises itself when its auth endpoint
// fails, does.
func AppendSubscriptionError(dst []byte, channel, errType, message string, status int) []byte {
	inner := make([]byte, 0, 48+len(message))
	inner = append(inner, `{"type":`...)
	inner = AppendString(inner, errType)
	inner = append(inner, `,"error":`...)
	inner = AppendString(inner, message)
	inner = append(inner, `,"status":`...)
	inner = strconv.AppendInt(inner, int64(status), 10)
	inner = append(inner, '}')
	dst = append(dst, `{"event":"pusher:subscription_error","channel":`...)
	dst = AppendString(dst, channel)
	dst = append(dst, `,"data":`...)
	dst = AppendString(dst, string(inner))
	return append(dst, '}')
}

// Fixed server messages. Pusher says ping and pong carry empty data.
var (
	MessagePing = []byte(`{"event":"pusher:ping","data":"{}"}`)
	MessagePong = []byte(`{"event":"pusher:pong","data":"{}"}`)
)

// AppendChannelEventAt is AppendChannelEvent for an app whose clients may
// resume channels: the event carries its position on the channel as the
// string "position", which pusher-js and laravel-echo ignore and
// Resound's recovery plugin records and gives back (docs/recovery.md).
// The string is the position and the time its job was stored, in unix
// milliseconds, "<position>.<ms>": the time tells the server where in
// its history to start looking for the position.
func AppendChannelEventAt(dst []byte, event, channel, data string, position uint64, storedMillis int64) []byte {
	dst = AppendChannelEvent(dst, event, channel, data, "")
	dst = append(dst[:len(dst)-1], `,"position":"`...)
	dst = AppendPosition(dst, position, storedMillis)
	return append(dst, `"}`...)
}

// Events of Resound's recovery extension (docs/recovery.md). pusher-js
// does not emit pusher_internal events it does not know, so stock clients
// never see them; the recovery plugin reads them off the connection.
const (
	EventResumed      = "pusher_internal:resumed"
	EventResumeFailed = "pusher_internal:resume_failed"
)

// AppendResumed appends pusher_internal:resumed: the replay of what the
// client missed on the channel is done.
func AppendResumed(dst []byte, channel string, replayed int) []byte {
	dst = append(dst, `{"event":"pusher_internal:resumed","channel":`...)
	dst = AppendString(dst, channel)
	dst = append(dst, `,"data":"{\"replayed\":`...)
	dst = strconv.AppendInt(dst, int64(replayed), 10)
	return append(dst, `}"}`...)
}

// AppendResumeFailed appends pusher_internal:resume_failed: what the
// client missed cannot be replayed (reason "expired": older than the
// window; "too_many": more than fits), and it must refetch.
func AppendResumeFailed(dst []byte, channel, reason string) []byte {
	dst = append(dst, `{"event":"pusher_internal:resume_failed","channel":`...)
	dst = AppendString(dst, channel)
	dst = append(dst, `,"data":"{\"reason\":\"`...)
	dst = append(dst, reason...) // a fixed word
	return append(dst, `\"}"}`...)
}

// AppendPosition appends a position string, "<position>.<ms>".
func AppendPosition(dst []byte, position uint64, storedMillis int64) []byte {
	dst = strconv.AppendUint(dst, position, 10)
	dst = append(dst, '.')
	return strconv.AppendInt(dst, storedMillis, 10)
}

// ParsePosition reads a position string a client gave back.
func ParsePosition(s string) (position uint64, storedMillis int64, ok bool) {
	p, ms, found := strings.Cut(s, ".")
	if !found {
		return 0, 0, false
	}
	pos, err1 := strconv.ParseUint(p, 10, 64)
	t, err2 := strconv.ParseInt(ms, 10, 64)
	if err1 != nil || err2 != nil || pos == 0 || t <= 0 {
		return 0, 0, false
	}
	return pos, t, true
}

// AppendChannelEvent appends an event on a channel as subscribers receive
// it. data is the producer's string, passed through untouched (encrypted
// channels depend on that). userID is set only for client events on
// presence channels; pass "" to omit it.
func AppendChannelEvent(dst []byte, event, channel, data, userID string) []byte {
	dst = append(dst, `{"event":`...)
	dst = AppendString(dst, event)
	dst = append(dst, `,"channel":`...)
	dst = AppendString(dst, channel)
	dst = append(dst, `,"data":`...)
	dst = AppendString(dst, data)
	if userID != "" {
		dst = append(dst, `,"user_id":`...)
		dst = AppendString(dst, userID)
	}
	return append(dst, '}')
}
