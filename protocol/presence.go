package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"
)

// PresenceMember is one user on a presence channel.
type PresenceMember struct {
	// ID is the user id as a string. Laravel sends numbers; Pusher's
	// protocol has strings, and pusher-js keys members by string anyway.
	ID string
	// Info is the user_info JSON, or nil.
	Info json.RawMessage
}

// PresenceLimits are Pusher's presence limits.
type PresenceLimits struct {
	MaxMembers  int // distinct users per channel
	MaxInfo     int // bytes of user_info
	MaxIDLength int // bytes of user_id
}

// DefaultPresenceLimits are the limits Pusher documents.
var DefaultPresenceLimits = PresenceLimits{MaxMembers: 100, MaxInfo: 1024, MaxIDLength: 128}

// Errors from ParseChannelData.
var (
	ErrNoUserID      = errors.New("channel_data must be a JSON object with a user_id")
	ErrUserIDTooLong = errors.New("user_id is too long")
	ErrUserInfoLarge = errors.New("user_info is too large")
)

// ParseChannelData reads the channel_data of a presence subscription:
// {"user_id": string or number, "user_info": any}. A numeric id becomes
// its decimal text.
func ParseChannelData(s string, lim PresenceLimits) (PresenceMember, error) {
	var raw struct {
		UserID   json.RawMessage `json:"user_id"`
		UserInfo json.RawMessage `json:"user_info"`
	}
	if json.Unmarshal([]byte(s), &raw) != nil || len(raw.UserID) == 0 {
		return PresenceMember{}, ErrNoUserID
	}
	var m PresenceMember
	switch raw.UserID[0] {
	case '"':
		if json.Unmarshal(raw.UserID, &m.ID) != nil {
			return m, ErrNoUserID
		}
	default:
		var n json.Number
		dec := json.NewDecoder(bytes.NewReader(raw.UserID))
		dec.UseNumber()
		if dec.Decode(&n) != nil {
			return m, ErrNoUserID
		}
		m.ID = n.String()
	}
	if m.ID == "" || !utf8.ValidString(m.ID) {
		return m, ErrNoUserID
	}
	if lim.MaxIDLength > 0 && len(m.ID) > lim.MaxIDLength {
		return m, ErrUserIDTooLong
	}
	if len(raw.UserInfo) > 0 && string(raw.UserInfo) != "null" {
		if lim.MaxInfo > 0 && len(raw.UserInfo) > lim.MaxInfo {
			return m, ErrUserInfoLarge
		}
		m.Info = raw.UserInfo
	}
	return m, nil
}

// AppendPresenceSucceeded appends subscription_succeeded for a presence
// channel: data is {"presence":{"ids":[...],"hash":{id:info},"count":n}},
// unique by user.
func AppendPresenceSucceeded(dst []byte, channel string, members []PresenceMember) []byte {
	inner := make([]byte, 0, 64+len(members)*48)
	inner = append(inner, `{"presence":{"ids":[`...)
	for i, m := range members {
		if i > 0 {
			inner = append(inner, ',')
		}
		inner = AppendString(inner, m.ID)
	}
	inner = append(inner, `],"hash":{`...)
	for i, m := range members {
		if i > 0 {
			inner = append(inner, ',')
		}
		inner = AppendString(inner, m.ID)
		inner = append(inner, ':')
		inner = appendInfo(inner, m.Info)
	}
	inner = append(inner, `},"count":`...)
	inner = strconv.AppendInt(inner, int64(len(members)), 10)
	inner = append(inner, `}}`...)
	dst = append(dst, `{"event":"pusher_internal:subscription_succeeded","channel":`...)
	dst = AppendString(dst, channel)
	dst = append(dst, `,"data":`...)
	dst = AppendString(dst, string(inner))
	return append(dst, '}')
}

func appendInfo(dst []byte, info json.RawMessage) []byte {
	if len(info) == 0 {
		return append(dst, "null"...)
	}
	var buf bytes.Buffer
	if json.Compact(&buf, info) != nil {
		return append(dst, "null"...)
	}
	return append(dst, buf.Bytes()...)
}

// AppendMemberAdded appends pusher_internal:member_added.
func AppendMemberAdded(dst []byte, channel string, m PresenceMember) []byte {
	inner := make([]byte, 0, 32+len(m.Info))
	inner = append(inner, `{"user_id":`...)
	inner = AppendString(inner, m.ID)
	inner = append(inner, `,"user_info":`...)
	inner = appendInfo(inner, m.Info)
	inner = append(inner, '}')
	dst = append(dst, `{"event":"pusher_internal:member_added","channel":`...)
	dst = AppendString(dst, channel)
	dst = append(dst, `,"data":`...)
	dst = AppendString(dst, string(inner))
	return append(dst, '}')
}

// AppendMemberRemoved appends pusher_internal:member_removed.
func AppendMemberRemoved(dst []byte, channel, userID string) []byte {
	inner := make([]byte, 0, 16+len(userID))
	inner = append(inner, `{"user_id":`...)
	inner = AppendString(inner, userID)
	inner = append(inner, '}')
	dst = append(dst, `{"event":"pusher_internal:member_removed","channel":`...)
	dst = AppendString(dst, channel)
	dst = append(dst, `,"data":`...)
	dst = AppendString(dst, string(inner))
	return append(dst, '}')
}

// RemovedMember reports the user a pusher_internal:member_removed frame
// (as AppendTextFrame made it) announces gone; ok is false for any other
// frame. A gateway reads it to keep a connection from hearing its own
// user removed: Pusher sends member_removed only once a user's last
// connection has left, so a subscriber still there is never told.
func RemovedMember(frame []byte) (userID string, ok bool) {
	payload, ok := framePayload(frame)
	if !ok || !bytes.Contains(payload, []byte(`"pusher_internal:member_removed"`)) {
		return "", false
	}
	var msg struct {
		Event string `json:"event"`
		Data  string `json:"data"`
	}
	if json.Unmarshal(payload, &msg) != nil || msg.Event != "pusher_internal:member_removed" {
		return "", false
	}
	var data struct {
		UserID string `json:"user_id"`
	}
	if json.Unmarshal([]byte(msg.Data), &data) != nil || data.UserID == "" {
		return "", false
	}
	return data.UserID, true
}

// framePayload returns the payload of one unmasked, final text frame.
func framePayload(frame []byte) ([]byte, bool) {
	if len(frame) < 2 || frame[0] != 0x80|OpText || frame[1]&0x80 != 0 {
		return nil, false
	}
	n, hdr := uint64(frame[1]), 2
	switch n {
	case 126:
		if len(frame) < 4 {
			return nil, false
		}
		n, hdr = uint64(frame[2])<<8|uint64(frame[3]), 4
	case 127:
		if len(frame) < 10 {
			return nil, false
		}
		n = 0
		for _, b := range frame[2:10] {
			n = n<<8 | uint64(b)
		}
		hdr = 10
	}
	if uint64(len(frame)-hdr) != n {
		return nil, false
	}
	return frame[hdr:], true
}
