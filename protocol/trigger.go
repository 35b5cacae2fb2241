package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits bound what one HTTP API call may trigger. The defaults are
// Pusher's; Reverb has none but a 10 000-byte request limit.
type Limits struct {
	MaxChannels  int // channels per trigger
	MaxDataBytes int // bytes of data per event
	MaxBatch     int // events per batch_events call
	MaxEventName int // bytes of an event name
}

// DefaultLimits are the limits Pusher documents.
var DefaultLimits = Limits{MaxChannels: 100, MaxDataBytes: 10240, MaxBatch: 10, MaxEventName: 200}

// Trigger is one event to broadcast on one or more channels: the body of
// POST /apps/{id}/events, or one item of batch_events.
type Trigger struct {
	Name     string   `json:"name"`
	Data     string   `json:"data"`
	Channels []string `json:"channels"`
	// SocketID, when set, is the connection that must not receive it
	// (Laravel's toOthers()).
	SocketID string `json:"socket_id,omitempty"`
	// Info asks for channel attributes in the response.
	Info string `json:"info,omitempty"`
}

// RequestError is a rejected API request: Status is the HTTP status Pusher
// answers with (400, or 413 for data over the size limit).
type RequestError struct {
	Status  int
	Message string
}

func (e *RequestError) Error() string { return e.Message }

func badRequest(format string, args ...any) error {
	return &RequestError{Status: 400, Message: fmt.Sprintf(format, args...)}
}

type rawTrigger struct {
	Name     json.RawMessage `json:"name"`
	Data     json.RawMessage `json:"data"`
	Channels json.RawMessage `json:"channels"`
	Channel  json.RawMessage `json:"channel"`
	SocketID json.RawMessage `json:"socket_id"`
	Info     json.RawMessage `json:"info"`
}

func present(raw json.RawMessage) bool { return raw != nil && string(raw) != "null" }

func (r rawTrigger) decode(lim Limits) (Trigger, error) {
	var t Trigger
	if !decodeString(r.Name, &t.Name) {
		return t, badRequest("name is required and must be a string")
	}
	if !decodeString(r.Data, &t.Data) {
		return t, badRequest("data is required and must be a string")
	}
	switch {
	case present(r.Channels):
		if err := json.Unmarshal(r.Channels, &t.Channels); err != nil {
			return t, badRequest("channels must be an array of strings")
		}
	case present(r.Channel):
		var ch string
		if !decodeString(r.Channel, &ch) {
			return t, badRequest("channel must be a string")
		}
		t.Channels = []string{ch}
	default:
		return t, badRequest("channels or channel is required")
	}
	if present(r.SocketID) && !decodeString(r.SocketID, &t.SocketID) {
		return t, badRequest("socket_id must be a string")
	}
	if present(r.Info) && !decodeString(r.Info, &t.Info) {
		return t, badRequest("info must be a string")
	}
	return t, t.Validate(lim)
}

// Validate checks a trigger against Pusher's rules and the limits.
func (t Trigger) Validate(lim Limits) error {
	if t.Name == "" {
		return badRequest("name must not be empty")
	}
	if len(t.Name) > lim.MaxEventName {
		return badRequest("name is longer than %d characters", lim.MaxEventName)
	}
	if strings.HasPrefix(t.Name, PusherEventPrefix) {
		return badRequest("event names starting with %q are reserved", PusherEventPrefix)
	}
	if len(t.Channels) == 0 {
		return badRequest("at least one channel is required")
	}
	if len(t.Channels) > lim.MaxChannels {
		return badRequest("at most %d channels may be triggered at once", lim.MaxChannels)
	}
	for _, ch := range t.Channels {
		if !ValidChannelName(ch) {
			return badRequest("invalid channel name %q: at most %d characters of [A-Za-z0-9_-=@,.;]", ch, MaxChannelNameLength)
		}
	}
	if len(t.Data) > lim.MaxDataBytes {
		return &RequestError{Status: 413, Message: fmt.Sprintf("data is larger than %d bytes", lim.MaxDataBytes)}
	}
	if t.SocketID != "" && !ValidSocketID(t.SocketID) {
		return badRequest("invalid socket_id %q", t.SocketID)
	}
	return nil
}

func decodeObject(body []byte, dst any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return badRequest("the body must be a JSON object")
	}
	// encoding/json would quietly replace invalid UTF-8 with U+FFFD, so
	// subscribers would get other bytes than the producer sent: refuse it.
	if !utf8.Valid(body) {
		return badRequest("the body is not valid UTF-8")
	}
	if err := json.Unmarshal(body, dst); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return badRequest("%s has the wrong type", typeErr.Field)
		}
		return badRequest("the body is not valid JSON")
	}
	return nil
}

// ParseTrigger decodes and validates the body of POST /apps/{id}/events.
func ParseTrigger(body []byte, lim Limits) (Trigger, error) {
	var r rawTrigger
	if err := decodeObject(body, &r); err != nil {
		return Trigger{}, err
	}
	return r.decode(lim)
}

// ParseBatch decodes and validates the body of POST
// /apps/{id}/batch_events: {"batch":[{name, data, channel, socket_id?,
// info?}, ...]}.
func ParseBatch(body []byte, lim Limits) ([]Trigger, error) {
	var r struct {
		Batch []json.RawMessage `json:"batch"`
	}
	if err := decodeObject(body, &r); err != nil {
		return nil, err
	}
	if len(r.Batch) == 0 {
		return nil, badRequest("batch is required and must be a non-empty array")
	}
	if len(r.Batch) > lim.MaxBatch {
		return nil, badRequest("at most %d events may be sent in a batch", lim.MaxBatch)
	}
	out := make([]Trigger, len(r.Batch))
	for i, raw := range r.Batch {
		var item rawTrigger
		if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &item) != nil {
			return nil, badRequest("batch[%d]: must be an object", i)
		}
		t, err := item.decode(lim)
		if err != nil {
			var re *RequestError
			if errors.As(err, &re) {
				return nil, &RequestError{Status: re.Status, Message: fmt.Sprintf("batch[%d]: %s", i, re.Message)}
			}
			return nil, err
		}
		out[i] = t
	}
	return out, nil
}
