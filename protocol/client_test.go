package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestAppendClientEvent(t *testing.T) {
	tests := []struct {
		name   string
		data   json.RawMessage
		userID string
		want   string
	}{
		{"object data", json.RawMessage(`{"who":"a","n":[1,2]}`), "",
			`{"event":"client-typing","channel":"private-chat","data":{"who":"a","n":[1,2]}}`},
		{"string data", json.RawMessage(`"hello \"you\""`), "",
			`{"event":"client-typing","channel":"private-chat","data":"hello \"you\""}`},
		{"with user id", json.RawMessage(`{}`), "42",
			`{"event":"client-typing","channel":"private-chat","data":{},"user_id":"42"}`},
		{"no data", nil, "",
			`{"event":"client-typing","channel":"private-chat"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := AppendClientEvent(nil, "client-typing", "private-chat", tt.data, tt.userID)
			if string(b) != tt.want {
				t.Fatalf("got  %s\nwant %s", b, tt.want)
			}
			parseJSON(t, b)
			var m struct {
				Data   json.RawMessage `json:"data"`
				UserID *string         `json:"user_id"`
			}
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			if string(m.Data) != string(tt.data) {
				t.Errorf("data %s, want %s passed through", m.Data, tt.data)
			}
			if (m.UserID != nil) != (tt.userID != "") {
				t.Errorf("user_id present=%v for userID %q", m.UserID != nil, tt.userID)
			}
		})
	}
	// Names needing escapes stay valid JSON.
	b := AppendClientEvent([]byte("x"), `client-"q"`, "presence-é", json.RawMessage(`1`), `u"1`)
	obj, _ := parseEvent(t, b[1:])
	if obj["event"] != `client-"q"` || obj["channel"] != "presence-é" || obj["user_id"] != `u"1` {
		t.Fatalf("escaped names: %s", b)
	}
}

func TestAppendCacheMiss(t *testing.T) {
	b := AppendCacheMiss(nil, "cache-news")
	if string(b) != `{"event":"pusher:cache_miss","channel":"cache-news"}` {
		t.Fatalf("got %s", b)
	}
	obj, _ := parseEvent(t, AppendCacheMiss(nil, `cache-"x"`))
	if obj["event"] != EventCacheMiss || obj["channel"] != `cache-"x"` || len(obj) != 2 {
		t.Fatalf("got %v", obj)
	}
}

func TestAppendSigninSuccess(t *testing.T) {
	userData := `{"id":"42","user_info":{"name":"Ann \"A\""},"watchlist":["1"]}`
	b := AppendSigninSuccess(nil, userData)
	obj := parseJSON(t, b).(map[string]any)
	if obj["event"] != EventSigninSuccess || len(obj) != 2 {
		t.Fatalf("signin_success %s", b)
	}
	if keys := objectKeys(t, b); !reflect.DeepEqual(keys, []string{"event", "data"}) {
		t.Fatalf("keys %v", keys)
	}
	data, ok := obj["data"].(string)
	if !ok {
		t.Fatalf("data is not a string: %s", b)
	}
	var inner map[string]any
	if err := json.Unmarshal([]byte(data), &inner); err != nil {
		t.Fatalf("data %q: %v", data, err)
	}
	// user_data is the exact string the client signed, as a string.
	if s, ok := inner["user_data"].(string); !ok || s != userData || len(inner) != 1 {
		t.Fatalf("inner %#v, want {user_data: %q}", inner, userData)
	}
}

func TestAppendWatchlistEvent(t *testing.T) {
	for _, tt := range []struct {
		name string
		ids  []string
	}{
		{"online", []string{"1", "2", `"3"`}},
		{"offline", []string{"9"}},
		{"online", nil},
	} {
		b := AppendWatchlistEvent(nil, tt.name, tt.ids)
		obj, data := parseEvent(t, b)
		if obj["event"] != EventWatchlistEvents || len(obj) != 2 {
			t.Fatalf("watchlist event %s", b)
		}
		if _, isString := obj["data"].(string); !isString {
			t.Fatalf("data is not a string: %s", b)
		}
		ids := []any{}
		for _, id := range tt.ids {
			ids = append(ids, id)
		}
		want := map[string]any{"events": []any{map[string]any{"name": tt.name, "user_ids": ids}}}
		if !reflect.DeepEqual(data, want) {
			t.Fatalf("data %#v, want %#v", data, want)
		}
	}
}

func TestAppendSubscriptionCount(t *testing.T) {
	b := AppendSubscriptionCount(nil, "orders", 3)
	if string(b) != `{"event":"pusher_internal:subscription_count","channel":"orders","data":"{\"subscription_count\":3}"}` {
		t.Fatalf("got %s", b)
	}
	obj, data := parseEvent(t, AppendSubscriptionCount([]byte{}, "o", 1234567))
	if obj["channel"] != "o" || !reflect.DeepEqual(data, map[string]any{"subscription_count": json.Number("1234567")}) {
		t.Fatalf("got %v %v", obj, data)
	}
}

func TestParseSigninData(t *testing.T) {
	ud := `{"id":"1"}`
	good := map[string]any{"auth": "key:sig", "user_data": ud}
	obj, _ := json.Marshal(good)
	str, _ := json.Marshal(string(obj))
	for _, in := range []json.RawMessage{obj, str} {
		d, err := ParseSigninData(in)
		if err != nil || d.Auth != "key:sig" || d.UserData != ud {
			t.Fatalf("ParseSigninData(%s) = %+v, %v", in, d, err)
		}
	}
	for _, bad := range []string{
		``, `null`, `"x"`, `[]`, `{}`, `{"auth":"a"}`, `{"user_data":"{}"}`,
		`{"auth":1,"user_data":"{}"}`, `{"auth":"a","user_data":{"id":"1"}}`, `{"auth":"a","user_data":"{}"`,
	} {
		if d, err := ParseSigninData(json.RawMessage(bad)); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("ParseSigninData(%s) = %+v, %v; want ErrInvalidMessage", bad, d, err)
		}
	}
}

func TestParseUserData(t *testing.T) {
	id, wl, err := ParseUserData(`{"id":"42","user_info":{"name":"x"},"watchlist":["1","2"]}`)
	if err != nil || id != "42" || !reflect.DeepEqual(wl, []string{"1", "2"}) {
		t.Fatalf("got %q %v %v", id, wl, err)
	}
	id, wl, err = ParseUserData(`{"id":"é"}`)
	if err != nil || id != "é" || wl != nil {
		t.Fatalf("no watchlist: %q %v %v", id, wl, err)
	}
	for _, bad := range []string{
		``, `null`, `[]`, `"42"`, `{}`, `{"id":""}`, `{"id":42}`, `{"id":null}`, `{"id":["1"]}`,
		`{"id":"1","watchlist":[1]}`, `{"id":"1","watchlist":"1"}`, `{"id":"1"`,
	} {
		if id, _, err := ParseUserData(bad); !errors.Is(err, ErrInvalidUserData) || id != "" {
			t.Errorf("ParseUserData(%s) = %q, %v; want ErrInvalidUserData", bad, id, err)
		}
	}
}

func TestServerToUserChannel(t *testing.T) {
	if got := ServerToUserChannel("42"); got != "#server-to-user-42" {
		t.Fatalf("got %q", got)
	}
}

// TestOriginAllowed uses Reverb's datasets (tests/Unit/... allowed
// origins) plus the corner cases Resound documents.
func TestOriginAllowed(t *testing.T) {
	tests := []struct {
		origin   string
		patterns []string
		want     bool
	}{
		// Reverb's datasets.
		{"http://localhost", []string{"laravel.com"}, false},
		{"http://sub.laravel.com", []string{"laravel.com"}, false},
		{"http://laravel.com", []string{"*.laravel.com"}, false},
		{"http://localhost", []string{"localhost"}, true},
		{"http://sub.localhost", []string{"localhost", "*.localhost"}, true},
		{"http://localhost", []string{"*"}, true},
		// No restriction.
		{"http://anything.test", nil, true},
		{"http://anything.test", []string{}, true},
		{"", nil, true},
		{"", []string{"*"}, true},
		{"", []string{"localhost", "*"}, true},
		// A restricted list refuses a missing Origin.
		{"", []string{"localhost"}, false},
		// Wildcards.
		{"https://a.b.laravel.com", []string{"*.laravel.com"}, true},
		{"https://sub.laravel.com", []string{"*.laravel.com"}, true},
		{"https://evil-laravel.com", []string{"*.laravel.com"}, false},
		{"https://laravel.com.evil.test", []string{"*.laravel.com"}, false},
		{"https://app.example.com", []string{"app.*.com"}, true},
		{"https://app.example.org", []string{"app.*.com"}, false},
		// Ports and schemes are ignored; only the host is matched.
		{"http://localhost:8080", []string{"localhost"}, true},
		{"https://sub.laravel.com:8443", []string{"*.laravel.com"}, true},
		{"http://laravel.com:80", []string{"laravel.com"}, true},
		// Case-insensitive.
		{"HTTP://LocalHost", []string{"localhost"}, true},
		{"http://localhost", []string{"LOCALHOST"}, true},
		{"https://Sub.Laravel.COM", []string{"*.laravel.com"}, true},
		// Several patterns: any one matching is enough.
		{"http://b.test", []string{"a.test", "b.test"}, true},
		{"http://c.test", []string{"a.test", "b.test"}, false},
	}
	for _, tt := range tests {
		if got := OriginAllowed(tt.origin, tt.patterns); got != tt.want {
			t.Errorf("OriginAllowed(%q, %q) = %v, want %v", tt.origin, tt.patterns, got, tt.want)
		}
	}
}

func TestWildcardMatch(t *testing.T) {
	tests := []struct {
		p, s string
		want bool
	}{
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "anything", true},
		{"a*", "a", true},
		{"a*", "ab", true},
		{"a*", "ba", false},
		{"*a", "ba", true},
		{"*a", "ab", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"a**b", "ab", true},
		{"*.x.com", ".x.com", true},
		{"*.x.com", "x.com", false},
	}
	for _, tt := range tests {
		if got := wildcardMatch(tt.p, tt.s); got != tt.want {
			t.Errorf("wildcardMatch(%q, %q) = %v, want %v", tt.p, tt.s, got, tt.want)
		}
	}
	if wildcardMatch(strings.Repeat("*a", 3)+"b", strings.Repeat("a", 20)) {
		t.Fatal("near-miss matched")
	}
}
