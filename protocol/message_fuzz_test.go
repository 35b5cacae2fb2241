package protocol

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzClientMessage feeds a client frame through every parser the gateway
// may apply to it: the message itself, then its data as pusher:subscribe,
// pusher:unsubscribe and pusher:signin data (whatever the event says, so
// that each parser sees every shape), then the user_data and channel_data
// those carry. The seed corpus (testdata/fuzz/FuzzClientMessage) holds what
// pusher-js, laravel-echo and the Java SDK send.
func FuzzClientMessage(f *testing.F) {
	f.Add([]byte(`{"event":"pusher:subscribe","data":{"auth":"","channel":"chat"}}`))
	f.Add([]byte(`{"event":"pusher:subscribe","data":"{\"channel\":\"chat\"}"}`))
	f.Add([]byte(`{"event":"client-typing","channel":"private-chat","data":{"id":1}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseClientMessage(b)
		if err == nil {
			checkClientMessage(t, b, m)
			checkData(t, m.Data)
		}
		// The frame as data too: pusher-js sends an object, the Java SDK
		// a string, an attacker anything.
		checkData(t, b)
	})
}

func checkClientMessage(t *testing.T, b []byte, m ClientMessage) {
	if !json.Valid(b) {
		t.Fatalf("accepted a frame that is not JSON: %q", b)
	}
	if m.Data != nil && (!json.Valid(m.Data) || string(m.Data) == "null") {
		t.Fatalf("data %q is not JSON, or null kept", m.Data)
	}
	if !m.HasChannel && m.Channel != "" {
		t.Fatalf("channel %q without HasChannel", m.Channel)
	}
	// What the gateway relays to the other members: valid JSON naming the
	// same event and channel. The gateway refuses frames that are not
	// UTF-8 before they get here (close 1007), so only then must the relay
	// be UTF-8 as well.
	out := AppendClientEvent(nil, m.Event, m.Channel, m.Data, "user-1")
	var back struct {
		Event   string          `json:"event"`
		Channel string          `json:"channel"`
		Data    json.RawMessage `json:"data"`
		UserID  string          `json:"user_id"`
	}
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatalf("relayed client event %q is not JSON: %v", out, err)
	}
	if back.Event != m.Event || back.Channel != m.Channel || back.UserID != "user-1" {
		t.Fatalf("relayed %q, want event %q channel %q", out, m.Event, m.Channel)
	}
	if utf8.Valid(b) && !utf8.Valid(out) {
		t.Fatalf("a UTF-8 frame was relayed as %q, not UTF-8", out)
	}
}

// checkData runs the data parsers on data and checks that what they accept
// survives being written out and read again.
func checkData(t *testing.T, data json.RawMessage) {
	if d, err := ParseSubscribeData(data); err == nil {
		enc := appendObject(nil, "channel", d.Channel)
		enc = appendObject(enc, "auth", d.Auth)
		if d.HasChannelData {
			enc = appendObject(enc, "channel_data", d.ChannelData)
		}
		enc = append(enc, '}')
		again, err := ParseSubscribeData(enc)
		if err != nil || again != d {
			t.Fatalf("subscribe data %+v re-encoded as %s parsed as %+v, %v", d, enc, again, err)
		}
		if d.HasChannelData {
			checkChannelData(t, d.ChannelData, DefaultPresenceLimits)
		}
		checkChannelAuthMessage(t, "123.456", d.Channel, d.ChannelData, d.HasChannelData)
	}
	if ch, err := ParseUnsubscribeData(data); err == nil {
		enc := append(appendObject(nil, "channel", ch), '}')
		if again, err := ParseUnsubscribeData(enc); err != nil || again != ch {
			t.Fatalf("unsubscribe channel %q re-encoded as %s parsed as %q, %v", ch, enc, again, err)
		}
	}
	if d, err := ParseSigninData(data); err == nil {
		enc := appendObject(nil, "auth", d.Auth)
		enc = append(appendObject(enc, "user_data", d.UserData), '}')
		if again, err := ParseSigninData(enc); err != nil || again != d {
			t.Fatalf("signin data %+v re-encoded as %s parsed as %+v, %v", d, enc, again, err)
		}
		checkUserData(t, d.UserData)
	}
}

// appendObject appends one "key":"value" member, opening the object first.
func appendObject(dst []byte, key, value string) []byte {
	if len(dst) == 0 {
		dst = append(dst, '{')
	} else {
		dst = append(dst, ',')
	}
	dst = AppendString(dst, key)
	dst = append(dst, ':')
	return AppendString(dst, value)
}

func checkUserData(t *testing.T, userData string) {
	id, watchlist, err := ParseUserData(userData)
	if err != nil {
		return
	}
	if id == "" || !utf8.ValidString(id) {
		t.Fatalf("user_data %q gave id %q", userData, id)
	}
	// What signin_success and watchlist events carry must stay JSON.
	for _, frame := range [][]byte{
		AppendSigninSuccess(nil, userData),
		AppendWatchlistEvent(nil, "online", watchlist),
	} {
		if !json.Valid(frame) || !utf8.Valid(frame) {
			t.Fatalf("frame %q for user_data %q is not UTF-8 JSON", frame, userData)
		}
	}
}

// FuzzChannelData fuzzes a presence subscription's channel_data under
// limits, as the gateway applies an app's (0 means no limit).
func FuzzChannelData(f *testing.F) {
	f.Add(`{"user_id":1,"user_info":{"name":"Taylor"}}`, 1024, 128)
	f.Add(`{"user_id":"abc","user_info":null}`, 1024, 128)
	f.Fuzz(func(t *testing.T, s string, maxInfo, maxID int) {
		checkChannelData(t, s, PresenceLimits{MaxMembers: 100, MaxInfo: maxInfo, MaxIDLength: maxID})
	})
}

func checkChannelData(t *testing.T, s string, lim PresenceLimits) {
	m, err := ParseChannelData(s, lim)
	if err != nil {
		return
	}
	if m.ID == "" || !utf8.ValidString(m.ID) {
		t.Fatalf("channel_data %q gave user id %q", s, m.ID)
	}
	if lim.MaxIDLength > 0 && len(m.ID) > lim.MaxIDLength {
		t.Fatalf("user id of %d bytes passed a limit of %d", len(m.ID), lim.MaxIDLength)
	}
	if m.Info != nil {
		if !json.Valid(m.Info) || string(m.Info) == "null" {
			t.Fatalf("user_info %q is not JSON, or null kept", m.Info)
		}
		if lim.MaxInfo > 0 && len(m.Info) > lim.MaxInfo {
			t.Fatalf("user_info of %d bytes passed a limit of %d", len(m.Info), lim.MaxInfo)
		}
	}
	// What the other members receive names the same user.
	frame := AppendMemberAdded(nil, "presence-x", m)
	var outer struct {
		Data string `json:"data"`
	}
	var inner struct {
		UserID string `json:"user_id"`
	}
	if json.Unmarshal(frame, &outer) != nil || json.Unmarshal([]byte(outer.Data), &inner) != nil || inner.UserID != m.ID {
		t.Fatalf("member_added %q does not name user %q", frame, m.ID)
	}
	if frame := AppendPresenceSucceeded(nil, "presence-x", []PresenceMember{m, m}); !json.Valid(frame) {
		t.Fatalf("subscription_succeeded %q is not JSON", frame)
	}
}
