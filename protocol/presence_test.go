package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseChannelData(t *testing.T) {
	lim := DefaultPresenceLimits
	tests := []struct {
		name   string
		in     string
		wantID string
		info   string // "" means nil
		err    error
	}{
		{"string id", `{"user_id":"abc","user_info":{"name":"Ann"}}`, "abc", `{"name":"Ann"}`, nil},
		{"numeric id", `{"user_id":42,"user_info":{"name":"Ann"}}`, "42", `{"name":"Ann"}`, nil},
		{"large numeric id", `{"user_id":12345678901234567890}`, "12345678901234567890", "", nil},
		{"negative numeric id", `{"user_id":-7}`, "-7", "", nil},
		{"numeric string id kept as text", `{"user_id":"007"}`, "007", "", nil},
		{"escaped string id", `{"user_id":"\u00e9t\u00e9"}`, "été", "", nil},
		{"no user_info", `{"user_id":"1"}`, "1", "", nil},
		{"null user_info", `{"user_id":"1","user_info":null}`, "1", "", nil},
		{"string user_info", `{"user_id":"1","user_info":"plain"}`, "1", `"plain"`, nil},
		{"missing id", `{"user_info":{}}`, "", "", ErrNoUserID},
		{"empty id", `{"user_id":""}`, "", "", ErrNoUserID},
		{"null id", `{"user_id":null}`, "", "", ErrNoUserID},
		{"object id", `{"user_id":{"id":1}}`, "", "", ErrNoUserID},
		{"array id", `{"user_id":[1]}`, "", "", ErrNoUserID},
		{"bool id", `{"user_id":true}`, "", "", ErrNoUserID},
		{"not an object", `"user_id"`, "", "", ErrNoUserID},
		{"not JSON", `{user_id:1}`, "", "", ErrNoUserID},
		{"empty", ``, "", "", ErrNoUserID},
		{"id at the limit", `{"user_id":"` + strings.Repeat("x", 128) + `"}`, strings.Repeat("x", 128), "", nil},
		{"id over the limit", `{"user_id":"` + strings.Repeat("x", 129) + `"}`, "", "", ErrUserIDTooLong},
		{"numeric id over the limit", `{"user_id":` + strings.Repeat("9", 129) + `}`, "", "", ErrUserIDTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseChannelData(tt.in, lim)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("ParseChannelData(%s) error %v, want %v", tt.in, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseChannelData(%s): %v", tt.in, err)
			}
			if m.ID != tt.wantID {
				t.Errorf("ID = %q, want %q", m.ID, tt.wantID)
			}
			if tt.info == "" {
				if m.Info != nil {
					t.Errorf("Info = %s, want nil", m.Info)
				}
			} else if string(m.Info) != tt.info {
				t.Errorf("Info = %s, want %s", m.Info, tt.info)
			}
		})
	}
}

func TestParseChannelDataUserInfoLimit(t *testing.T) {
	lim := PresenceLimits{MaxMembers: 100, MaxInfo: 20, MaxIDLength: 128}
	fits := `{"n":"` + strings.Repeat("a", 20-8) + `"}` // 20 bytes
	if len(fits) != 20 {
		t.Fatalf("fixture is %d bytes", len(fits))
	}
	if m, err := ParseChannelData(`{"user_id":"1","user_info":`+fits+`}`, lim); err != nil || string(m.Info) != fits {
		t.Fatalf("info at the limit: %v %s", err, m.Info)
	}
	over := `{"n":"` + strings.Repeat("a", 21-8) + `"}`
	if _, err := ParseChannelData(`{"user_id":"1","user_info":`+over+`}`, lim); !errors.Is(err, ErrUserInfoLarge) {
		t.Fatalf("info over the limit: %v, want ErrUserInfoLarge", err)
	}
	// Default limits: 1 KB.
	big := `{"n":"` + strings.Repeat("a", 1100) + `"}`
	if _, err := ParseChannelData(`{"user_id":"1","user_info":`+big+`}`, DefaultPresenceLimits); !errors.Is(err, ErrUserInfoLarge) {
		t.Fatalf("1.1 KB of info: %v, want ErrUserInfoLarge", err)
	}
	// Zero limits mean no limit.
	if _, err := ParseChannelData(`{"user_id":"`+strings.Repeat("x", 500)+`","user_info":`+big+`}`, PresenceLimits{}); err != nil {
		t.Fatalf("no limits: %v", err)
	}
}

type presencePayload struct {
	Presence struct {
		IDs   []string                   `json:"ids"`
		Hash  map[string]json.RawMessage `json:"hash"`
		Count int                        `json:"count"`
	} `json:"presence"`
}

func TestAppendPresenceSucceeded(t *testing.T) {
	members := []PresenceMember{
		{ID: "1", Info: json.RawMessage(`{ "name" : "Ann" }`)},
		{ID: "2"},
		{ID: `quote"d`, Info: json.RawMessage(`"x"`)},
		{ID: "日本"},
	}
	b := AppendPresenceSucceeded([]byte("prefix"), "presence-room", members)
	if !strings.HasPrefix(string(b), "prefix") {
		t.Fatalf("dst not kept: %s", b)
	}
	b = b[len("prefix"):]
	obj, ok := parseJSON(t, b).(map[string]any)
	if !ok {
		t.Fatalf("not an object: %s", b)
	}
	if keys := objectKeys(t, b); !reflect.DeepEqual(keys, []string{"event", "channel", "data"}) {
		t.Fatalf("keys %v", keys)
	}
	if obj["event"] != EventSubscriptionSucceeded || obj["channel"] != "presence-room" {
		t.Fatalf("event/channel: %s", b)
	}
	data, ok := obj["data"].(string)
	if !ok {
		t.Fatalf("data is not a JSON string: %s", b)
	}
	var p presencePayload
	if err := json.Unmarshal([]byte(data), &p); err != nil {
		t.Fatalf("data %q: %v", data, err)
	}
	if want := []string{"1", "2", `quote"d`, "日本"}; !reflect.DeepEqual(p.Presence.IDs, want) {
		t.Errorf("ids %v, want %v", p.Presence.IDs, want)
	}
	if p.Presence.Count != 4 {
		t.Errorf("count %d", p.Presence.Count)
	}
	wantHash := map[string]string{"1": `{"name":"Ann"}`, "2": "null", `quote"d`: `"x"`, "日本": "null"}
	if len(p.Presence.Hash) != len(wantHash) {
		t.Errorf("hash %v", p.Presence.Hash)
	}
	for id, want := range wantHash {
		if got := string(p.Presence.Hash[id]); got != want {
			t.Errorf("hash[%s] = %s, want %s", id, got, want)
		}
	}
	if inner := objectKeys(t, []byte(data)); !reflect.DeepEqual(inner, []string{"presence"}) {
		t.Errorf("data keys %v", inner)
	}
}

func TestAppendPresenceSucceededEmpty(t *testing.T) {
	_, data := parseEvent(t, AppendPresenceSucceeded(nil, "presence-x", nil))
	want := map[string]any{"presence": map[string]any{"ids": []any{}, "hash": map[string]any{}, "count": json.Number("0")}}
	if !reflect.DeepEqual(data, want) {
		t.Fatalf("data %#v, want %#v", data, want)
	}
}

func TestAppendMemberAddedAndRemoved(t *testing.T) {
	b := AppendMemberAdded(nil, "presence-room", PresenceMember{ID: "7", Info: json.RawMessage(`{"name": "Bo"}`)})
	obj, data := parseEvent(t, b)
	if obj["event"] != EventMemberAdded || obj["channel"] != "presence-room" {
		t.Fatalf("member_added %s", b)
	}
	if _, isString := obj["data"].(string); !isString {
		t.Fatalf("member_added data is not a string: %s", b)
	}
	want := map[string]any{"user_id": "7", "user_info": map[string]any{"name": "Bo"}}
	if !reflect.DeepEqual(data, want) {
		t.Fatalf("member_added data %#v", data)
	}
	if keys := objectKeys(t, []byte(obj["data"].(string))); !reflect.DeepEqual(keys, []string{"user_id", "user_info"}) {
		t.Fatalf("member_added data keys %v", keys)
	}

	_, data = parseEvent(t, AppendMemberAdded(nil, "presence-room", PresenceMember{ID: "8"}))
	if !reflect.DeepEqual(data, map[string]any{"user_id": "8", "user_info": nil}) {
		t.Fatalf("member_added without info %#v", data)
	}

	b = AppendMemberRemoved(nil, "presence-room", `a"b`)
	obj, data = parseEvent(t, b)
	if obj["event"] != EventMemberRemoved || obj["channel"] != "presence-room" {
		t.Fatalf("member_removed %s", b)
	}
	if !reflect.DeepEqual(data, map[string]any{"user_id": `a"b`}) {
		t.Fatalf("member_removed data %#v", data)
	}
	if keys := objectKeys(t, b); !reflect.DeepEqual(keys, []string{"event", "channel", "data"}) {
		t.Fatalf("keys %v", keys)
	}
}

// TestParsedMemberRoundTrip: what ParseChannelData reads is what
// member_added announces.
func TestParsedMemberRoundTrip(t *testing.T) {
	m, err := ParseChannelData(`{"user_id":12345678901234567890,"user_info":{"name":"N","tags":[1,2]}}`, DefaultPresenceLimits)
	if err != nil {
		t.Fatal(err)
	}
	_, data := parseEvent(t, AppendMemberAdded(nil, "presence-x", m))
	d := data.(map[string]any)
	if d["user_id"] != "12345678901234567890" {
		t.Fatalf("user_id %#v", d["user_id"])
	}
	if !reflect.DeepEqual(d["user_info"], map[string]any{"name": "N", "tags": []any{json.Number("1"), json.Number("2")}}) {
		t.Fatalf("user_info %#v", d["user_info"])
	}
}

func TestRemovedMember(t *testing.T) {
	long := strings.Repeat("x", 200) // a 2-byte length header
	for _, tc := range []struct {
		name  string
		frame []byte
		user  string
		ok    bool
	}{
		{"removed", AppendTextFrame(nil, AppendMemberRemoved(nil, "presence-a", "7")), "7", true},
		{"long channel", AppendTextFrame(nil, AppendMemberRemoved(nil, "presence-"+long, "u")), "u", true},
		{"added", AppendTextFrame(nil, AppendMemberAdded(nil, "presence-a", PresenceMember{ID: "7"})), "", false},
		{"event named so", AppendTextFrame(nil, AppendChannelEvent(nil, "x", "presence-a", `"pusher_internal:member_removed"`, "")), "", false},
		{"truncated", AppendTextFrame(nil, AppendMemberRemoved(nil, "presence-a", "7"))[:20], "", false},
		{"binary", AppendFrame(nil, OpBinary, AppendMemberRemoved(nil, "presence-a", "7")), "", false},
		{"empty", nil, "", false},
	} {
		user, ok := RemovedMember(tc.frame)
		if user != tc.user || ok != tc.ok {
			t.Errorf("%s: got %q, %v; want %q, %v", tc.name, user, ok, tc.user, tc.ok)
		}
	}
}
