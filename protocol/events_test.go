package protocol

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"strconv"
	"testing"
)

// parseJSON decodes b into generic JSON, failing the test if it is not
// exactly one JSON value.
func parseJSON(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("trailing data after JSON value in %s", b)
	}
	return v
}

// objectKeys returns the keys of a JSON object in the order they appear.
func objectKeys(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %s", b)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// parseEvent parses an event and, when its data is a string holding JSON,
// returns that JSON parsed too.
func parseEvent(t *testing.T, b []byte) (map[string]any, any) {
	t.Helper()
	obj, ok := parseJSON(t, b).(map[string]any)
	if !ok {
		t.Fatalf("event is not a JSON object: %s", b)
	}
	s, ok := obj["data"].(string)
	if !ok {
		return obj, nil
	}
	if !json.Valid([]byte(s)) {
		return obj, nil
	}
	return obj, parseJSON(t, []byte(s))
}

func TestAppendConnectionEstablished(t *testing.T) {
	tests := []struct {
		socketID string
		timeout  int
	}{
		{"123.456", 30},
		{"1234.1234", 120},
		{"1.1", 1},
	}
	for _, tt := range tests {
		out := AppendConnectionEstablished(nil, tt.socketID, tt.timeout)
		obj, data := parseEvent(t, out)
		if _, isString := obj["data"].(string); !isString {
			t.Errorf("%s: data must be a JSON-encoded string", out)
		}
		want := map[string]any{"event": "pusher:connection_established", "data": obj["data"]}
		if !reflect.DeepEqual(obj, want) {
			t.Errorf("%s: want only event and data keys", out)
		}
		if obj["event"] != EventConnectionEstablished {
			t.Errorf("event = %v", obj["event"])
		}
		wantData := map[string]any{"socket_id": tt.socketID, "activity_timeout": json.Number(strconv.Itoa(tt.timeout))}
		if !reflect.DeepEqual(data, wantData) {
			t.Errorf("data = %#v, want %#v", data, wantData)
		}
		m, _ := data.(map[string]any)
		if n, _ := m["activity_timeout"].(json.Number).Int64(); n == 0 {
			t.Errorf("activity_timeout is zero; pusher-js fails the handshake")
		}
		if _, isString := m["socket_id"].(string); !isString {
			t.Errorf("socket_id must be a string, got %T", m["socket_id"])
		}
	}
}

func TestAppendError(t *testing.T) {
	tests := []struct {
		code    int
		message string
	}{
		{CodeUnauthorized, "Connection is unauthorized"},
		{CodeInvalidMessage, "Invalid message format"},
		{CodeAppNotFound, "Application does not exist"},
		{CodeClientRateLimit, `quotes " and \ and <&> and ` + "\n"},
	}
	for _, tt := range tests {
		out := AppendError(nil, tt.code, tt.message)
		obj, data := parseEvent(t, out)
		inner, isString := obj["data"].(string)
		if !isString {
			t.Fatalf("%s: data must be a JSON-encoded string", out)
		}
		if len(obj) != 2 || obj["event"] != EventError {
			t.Errorf("%s: want exactly event %q and data (no channel)", out, EventError)
		}
		wantData := map[string]any{"code": json.Number(strconv.Itoa(tt.code)), "message": tt.message}
		if !reflect.DeepEqual(data, wantData) {
			t.Errorf("data = %#v, want %#v", data, wantData)
		}
		if keys := objectKeys(t, []byte(inner)); !reflect.DeepEqual(keys, []string{"code", "message"}) {
			t.Errorf("data keys = %v, want [code message] in that order", keys)
		}
	}
}

func TestAppendSubscriptionSucceeded(t *testing.T) {
	for _, ch := range []string{"test-channel", "private-x", "cache-y", `odd"name\`} {
		out := AppendSubscriptionSucceeded(nil, ch)
		obj := parseJSON(t, out)
		want := map[string]any{"event": EventSubscriptionSucceeded, "channel": ch, "data": "{}"}
		if !reflect.DeepEqual(obj, want) {
			t.Errorf("AppendSubscriptionSucceeded(%q) = %s, want %v", ch, out, want)
		}
	}
}

func TestAppendSubscriptionError(t *testing.T) {
	tests := []struct {
		channel, errType, message string
		status                    int
	}{
		{"private-x", "AuthError", "Connection is unauthorized", 401},
		{"presence-room", "LimitReached", "The presence channel is full", 4100},
		{"private-q", `Odd"Type`, "line\nbreak <&>", 403},
	}
	for _, tt := range tests {
		out := AppendSubscriptionError(nil, tt.channel, tt.errType, tt.message, tt.status)
		obj, data := parseEvent(t, out)
		if _, isString := obj["data"].(string); !isString {
			t.Fatalf("%s: data must be a JSON-encoded string", out)
		}
		if len(obj) != 3 || obj["event"] != EventSubscriptionError || obj["channel"] != tt.channel {
			t.Errorf("%s: want event %q, channel %q, data", out, EventSubscriptionError, tt.channel)
		}
		wantData := map[string]any{"type": tt.errType, "error": tt.message, "status": json.Number(strconv.Itoa(tt.status))}
		if !reflect.DeepEqual(data, wantData) {
			t.Errorf("data = %#v, want %#v", data, wantData)
		}
	}
}

func TestAppendChannelEvent(t *testing.T) {
	tests := []struct {
		name                         string
		event, channel, data, userID string
	}{
		{"api event", "NewEvent", "test-channel-two", `{"some":"data"}`, ""},
		{"laravel class name", `App\Events\TestEvent`, "cache-test-channel", `{"foo":"bar"}`, ""},
		{"not json data", "e", "c", `plain text with "quotes" and \ and <&>`, ""},
		{"empty data", "e", "c", "", ""},
		{"encrypted payload", "e", "private-encrypted-x", `{"nonce":"4sVYwy4j/8dCcjyxtPCWyk19GaaViaW9","ciphertext":"/GMESnFGlbNn01BuBjp31XYa3C9kH/+/2Q=="}`, ""},
		{"client event with user_id", "client-typing", "presence-room", `{"id":123}`, "42"},
		{"string user_id", "client-x", "presence-room", "{}", "user@example.com"},
		{"unicode", "e", "c", "emoji 👋 and \u2028", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := AppendChannelEvent(nil, tt.event, tt.channel, tt.data, tt.userID)
			obj := parseJSON(t, out)
			want := map[string]any{"event": tt.event, "channel": tt.channel, "data": tt.data}
			if tt.userID != "" {
				want["user_id"] = tt.userID
			}
			if !reflect.DeepEqual(obj, want) {
				t.Errorf("AppendChannelEvent = %s\nparsed %#v\nwant   %#v", out, obj, want)
			}
		})
	}
	// dst is appended to, not overwritten.
	pre := []byte("xx")
	if out := AppendChannelEvent(pre, "e", "c", "d", ""); !bytes.HasPrefix(out, []byte("xx{")) {
		t.Errorf("AppendChannelEvent with prefix = %q", out)
	}
}

func TestFixedMessages(t *testing.T) {
	tests := []struct {
		name  string
		msg   []byte
		event string
	}{
		{"ping", MessagePing, EventPing},
		{"pong", MessagePong, EventPong},
	}
	for _, tt := range tests {
		obj, ok := parseJSON(t, tt.msg).(map[string]any)
		if !ok {
			t.Fatalf("%s: not an object: %s", tt.name, tt.msg)
		}
		if obj["event"] != tt.event {
			t.Errorf("%s: event = %v, want %q", tt.name, obj["event"], tt.event)
		}
		if _, has := obj["channel"]; has {
			t.Errorf("%s: has a channel key", tt.name)
		}
	}
	if EventPing != "pusher:ping" || EventPong != "pusher:pong" {
		t.Errorf("ping/pong names = %q, %q", EventPing, EventPong)
	}
}

func TestEventsAppendToDst(t *testing.T) {
	appenders := map[string]func([]byte) []byte{
		"connection_established": func(d []byte) []byte { return AppendConnectionEstablished(d, "1.2", 30) },
		"error":                  func(d []byte) []byte { return AppendError(d, 4009, "x") },
		"subscription_succeeded": func(d []byte) []byte { return AppendSubscriptionSucceeded(d, "c") },
		"subscription_error":     func(d []byte) []byte { return AppendSubscriptionError(d, "c", "AuthError", "x", 401) },
	}
	for name, f := range appenders {
		alone := f(nil)
		with := f([]byte("prefix"))
		if !bytes.Equal(with, append([]byte("prefix"), alone...)) {
			t.Errorf("%s: appending to a non-empty dst = %q", name, with)
		}
	}
}

func TestAppendChannelEventAt(t *testing.T) {
	got := string(AppendChannelEventAt(nil, "e", "c", `{"a":1}`, 12345<<4|3, 1733456789012))
	want := `{"event":"e","channel":"c","data":"{\"a\":1}","position":"197523.1733456789012"}`
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	pos, ms, ok := ParsePosition("197523.1733456789012")
	if !ok || pos != 12345<<4|3 || ms != 1733456789012 {
		t.Fatalf("parsed %d %d %v", pos, ms, ok)
	}
	for _, bad := range []string{"", "1", "1.", ".1", "0.1", "1.0", "a.1", "1.b", "-1.1", "1.2.3", "18446744073709551616.1"} {
		if _, _, ok := ParsePosition(bad); ok {
			t.Errorf("ParsePosition(%q) accepted", bad)
		}
	}
}

func TestResumeEvents(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{string(AppendResumed(nil, "news", 3)), `{"event":"pusher_internal:resumed","channel":"news","data":"{\"replayed\":3}"}`},
		{string(AppendResumeFailed(nil, "news", "expired")), `{"event":"pusher_internal:resume_failed","channel":"news","data":"{\"reason\":\"expired\"}"}`},
	} {
		if tc.got != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(tc.got), &m); err != nil {
			t.Errorf("%s: %v", tc.got, err)
		}
	}
}
