package protocol

import (
	"encoding/json"
	"errors"
)

// ErrInvalidMessage is returned for a frame that is not a Pusher message.
var ErrInvalidMessage = errors.New("invalid message format")

// MessageInvalidFormat is the pusher:error text for such a frame, Reverb's
// wording.
const MessageInvalidFormat = "Invalid message format"

// ClientMessage is one message a client sent.
type ClientMessage struct {
	Event string
	// Channel is set when the message names one (client events,
	// subscription replies); HasChannel tells "" from absent.
	Channel    string
	HasChannel bool
	// Data is the raw JSON of the data field, or nil if absent.
	Data json.RawMessage
}

type rawClientMessage struct {
	Event   json.RawMessage `json:"event"`
	Channel json.RawMessage `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

// ParseClientMessage decodes a client frame. The event must be a string and
// the channel, when present, a string too.
func ParseClientMessage(b []byte) (ClientMessage, error) {
	var raw rawClientMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return ClientMessage{}, ErrInvalidMessage
	}
	var m ClientMessage
	if !decodeString(raw.Event, &m.Event) {
		return ClientMessage{}, ErrInvalidMessage
	}
	if raw.Channel != nil && string(raw.Channel) != "null" {
		if !decodeString(raw.Channel, &m.Channel) {
			return ClientMessage{}, ErrInvalidMessage
		}
		m.HasChannel = true
	}
	if raw.Data != nil && string(raw.Data) != "null" {
		m.Data = raw.Data
	}
	return m, nil
}

func decodeString(raw json.RawMessage, dst *string) bool {
	if len(raw) == 0 || raw[0] != '"' {
		return false
	}
	return json.Unmarshal(raw, dst) == nil
}

// unwrapData returns the object a data field holds. pusher-js sends an
// object; some SDKs (Java) send the object JSON-encoded as a string, which
// Reverb accepts too.
func unwrapData(data json.RawMessage) json.RawMessage {
	if len(data) > 0 && data[0] == '"' {
		var s string
		if json.Unmarshal(data, &s) == nil && json.Valid([]byte(s)) {
			return json.RawMessage(s)
		}
	}
	return data
}

// SubscribeData is the data of pusher:subscribe.
type SubscribeData struct {
	Channel string
	Auth    string
	// ChannelData is the exact string the auth signature covers (presence).
	ChannelData    string
	HasChannelData bool
	// Position, when set, is the last position the client saw on the
	// channel: a resume (Resound's extension, docs/recovery.md).
	Position string
}

// ParseSubscribeData decodes the data of pusher:subscribe. channel must be
// a string; auth and channel_data, when present, strings too.
func ParseSubscribeData(data json.RawMessage) (SubscribeData, error) {
	var raw struct {
		Channel     json.RawMessage `json:"channel"`
		Auth        json.RawMessage `json:"auth"`
		ChannelData json.RawMessage `json:"channel_data"`
		Position    json.RawMessage `json:"position"`
	}
	data = unwrapData(data)
	if len(data) == 0 || data[0] != '{' || json.Unmarshal(data, &raw) != nil {
		return SubscribeData{}, ErrInvalidMessage
	}
	var d SubscribeData
	if !decodeString(raw.Channel, &d.Channel) {
		return SubscribeData{}, ErrInvalidMessage
	}
	if raw.Position != nil && string(raw.Position) != "null" && !decodeString(raw.Position, &d.Position) {
		return SubscribeData{}, ErrInvalidMessage
	}
	if raw.Auth != nil && string(raw.Auth) != "null" && !decodeString(raw.Auth, &d.Auth) {
		return SubscribeData{}, ErrInvalidMessage
	}
	if raw.ChannelData != nil && string(raw.ChannelData) != "null" {
		if !decodeString(raw.ChannelData, &d.ChannelData) {
			return SubscribeData{}, ErrInvalidMessage
		}
		d.HasChannelData = true
	}
	return d, nil
}

// ParseUnsubscribeData decodes the data of pusher:unsubscribe and returns
// the channel.
func ParseUnsubscribeData(data json.RawMessage) (string, error) {
	var raw struct {
		Channel json.RawMessage `json:"channel"`
	}
	data = unwrapData(data)
	if len(data) == 0 || data[0] != '{' || json.Unmarshal(data, &raw) != nil {
		return "", ErrInvalidMessage
	}
	var ch string
	if !decodeString(raw.Channel, &ch) {
		return "", ErrInvalidMessage
	}
	return ch, nil
}
