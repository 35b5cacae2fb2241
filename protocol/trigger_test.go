package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// body builds a JSON request body from a Go value.
func body(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func channelList(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("channel-%d", i)
	}
	return out
}

// requestStatus returns the RequestError status of err, or 0 if err is nil,
// failing if err is another kind of error.
func requestStatus(t *testing.T, err error) (int, string) {
	t.Helper()
	if err == nil {
		return 0, ""
	}
	var re *RequestError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a *RequestError", err, err)
	}
	if re.Error() != re.Message {
		t.Errorf("Error() = %q, want the message %q", re.Error(), re.Message)
	}
	return re.Status, re.Message
}

func TestParseTrigger(t *testing.T) {
	lim := DefaultLimits
	tests := []struct {
		name       string
		body       []byte
		want       Trigger
		wantStatus int
	}{
		{
			name: "reference body with channels",
			body: []byte(`{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}`),
			want: Trigger{Name: "foo", Data: `{"some":"data"}`, Channels: []string{"project-3"}},
		},
		{
			name: "channel",
			body: []byte(`{"name":"NewEvent","channel":"test-channel","data":"x"}`),
			want: Trigger{Name: "NewEvent", Data: "x", Channels: []string{"test-channel"}},
		},
		{
			name: "several channels, socket_id and info",
			body: []byte(`{"name":"e","channels":["a","presence-b"],"data":"","socket_id":"123.456","info":"user_count"}`),
			want: Trigger{Name: "e", Data: "", Channels: []string{"a", "presence-b"}, SocketID: "123.456", Info: "user_count"},
		},
		{
			name: "channels wins over channel",
			body: []byte(`{"name":"e","channels":["a"],"channel":"b","data":"d"}`),
			want: Trigger{Name: "e", Data: "d", Channels: []string{"a"}},
		},
		{
			name: "null channels falls back to channel",
			body: []byte(`{"name":"e","channels":null,"channel":"b","data":"d"}`),
			want: Trigger{Name: "e", Data: "d", Channels: []string{"b"}},
		},
		{
			name: "null socket_id and info are absent",
			body: []byte(`{"name":"e","channel":"b","data":"d","socket_id":null,"info":null}`),
			want: Trigger{Name: "e", Data: "d", Channels: []string{"b"}},
		},
		{
			name: "laravel class name and server-to-user channel",
			body: []byte(`{"name":"App\\Events\\Ping","channel":"#server-to-user-42","data":"{}"}`),
			want: Trigger{Name: `App\Events\Ping`, Data: "{}", Channels: []string{"#server-to-user-42"}},
		},
		{
			name: "whitespace around body",
			body: []byte("\n  {\"name\":\"e\",\"channel\":\"b\",\"data\":\"d\"}  \n"),
			want: Trigger{Name: "e", Data: "d", Channels: []string{"b"}},
		},
		{
			name: "data exactly MaxDataBytes",
			body: body(t, map[string]any{"name": "e", "channel": "c", "data": strings.Repeat("x", lim.MaxDataBytes)}),
			want: Trigger{Name: "e", Data: strings.Repeat("x", lim.MaxDataBytes), Channels: []string{"c"}},
		},
		{
			name: "100 channels",
			body: body(t, map[string]any{"name": "e", "channels": channelList(100), "data": "d"}),
			want: Trigger{Name: "e", Data: "d", Channels: channelList(100)},
		},
		{
			name: "name of MaxEventName bytes",
			body: body(t, map[string]any{"name": strings.Repeat("n", lim.MaxEventName), "channel": "c", "data": "d"}),
			want: Trigger{Name: strings.Repeat("n", lim.MaxEventName), Data: "d", Channels: []string{"c"}},
		},

		// data
		{name: "data missing", body: []byte(`{"name":"e","channel":"c"}`), wantStatus: 400},
		{name: "data null", body: []byte(`{"name":"e","channel":"c","data":null}`), wantStatus: 400},
		{name: "data number", body: []byte(`{"name":"e","channel":"c","data":1}`), wantStatus: 400},
		{name: "data object", body: []byte(`{"name":"e","channel":"c","data":{"some":"data"}}`), wantStatus: 400},
		{name: "data array", body: []byte(`{"name":"e","channel":"c","data":[]}`), wantStatus: 400},
		{name: "data bool", body: []byte(`{"name":"e","channel":"c","data":true}`), wantStatus: 400},
		{
			name:       "data over MaxDataBytes",
			body:       body(t, map[string]any{"name": "e", "channel": "c", "data": strings.Repeat("x", lim.MaxDataBytes+1)}),
			wantStatus: 413,
		},

		// name
		{name: "name missing", body: []byte(`{"channel":"c","data":"d"}`), wantStatus: 400},
		{name: "name number", body: []byte(`{"name":1,"channel":"c","data":"d"}`), wantStatus: 400},
		{name: "name empty", body: []byte(`{"name":"","channel":"c","data":"d"}`), wantStatus: 400},
		{
			name:       "name too long",
			body:       body(t, map[string]any{"name": strings.Repeat("n", lim.MaxEventName+1), "channel": "c", "data": "d"}),
			wantStatus: 400,
		},
		{name: "pusher:foo", body: []byte(`{"name":"pusher:foo","channel":"c","data":"d"}`), wantStatus: 400},
		{name: "pusher_internal:x", body: []byte(`{"name":"pusher_internal:x","channel":"c","data":"d"}`), wantStatus: 400},
		{name: "pusher:subscription_succeeded", body: []byte(`{"name":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}`), wantStatus: 400},
		{name: "pusher alone", body: []byte(`{"name":"pusher","channel":"c","data":"d"}`), wantStatus: 400},

		// channels
		{name: "101 channels", body: body(t, map[string]any{"name": "e", "channels": channelList(101), "data": "d"}), wantStatus: 400},
		{name: "no channel at all", body: []byte(`{"name":"e","data":"d"}`), wantStatus: 400},
		{name: "channels empty", body: []byte(`{"name":"e","channels":[],"data":"d"}`), wantStatus: 400},
		{name: "channels a string", body: []byte(`{"name":"e","channels":"c","data":"d"}`), wantStatus: 400},
		{name: "channels of numbers", body: []byte(`{"name":"e","channels":[1],"data":"d"}`), wantStatus: 400},
		{name: "channels with null", body: []byte(`{"name":"e","channels":[null],"data":"d"}`), wantStatus: 400},
		{name: "channel number", body: []byte(`{"name":"e","channel":1,"data":"d"}`), wantStatus: 400},
		{name: "channel array", body: []byte(`{"name":"e","channel":["c"],"data":"d"}`), wantStatus: 400},
		{name: "channel empty", body: []byte(`{"name":"e","channel":"","data":"d"}`), wantStatus: 400},
		{name: "invalid channel name", body: []byte(`{"name":"e","channel":"a b","data":"d"}`), wantStatus: 400},
		{name: "invalid name among channels", body: []byte(`{"name":"e","channels":["ok","no/slash"],"data":"d"}`), wantStatus: 400},
		{name: "channel hash alone", body: []byte(`{"name":"e","channel":"#","data":"d"}`), wantStatus: 400},
		{
			name:       "channel of 165 chars",
			body:       body(t, map[string]any{"name": "e", "channel": strings.Repeat("c", 165), "data": "d"}),
			wantStatus: 400,
		},

		// socket_id and info
		{name: "socket_id abc", body: []byte(`{"name":"e","channel":"c","data":"d","socket_id":"abc"}`), wantStatus: 400},
		{name: "socket_id 1.2.3", body: []byte(`{"name":"e","channel":"c","data":"d","socket_id":"1.2.3"}`), wantStatus: 400},
		{name: "socket_id integer", body: []byte(`{"name":"e","channel":"c","data":"d","socket_id":123}`), wantStatus: 400},
		{name: "socket_id float", body: []byte(`{"name":"e","channel":"c","data":"d","socket_id":123.456}`), wantStatus: 400},
		{name: "info integer", body: []byte(`{"name":"e","channel":"c","data":"d","info":1}`), wantStatus: 400},
		{name: "info array", body: []byte(`{"name":"e","channel":"c","data":"d","info":["user_count"]}`), wantStatus: 400},

		// body
		{name: "body not JSON", body: []byte(`name=e&channel=c`), wantStatus: 400},
		{name: "body empty", body: []byte(``), wantStatus: 400},
		{name: "body array", body: []byte(`[{"name":"e","channel":"c","data":"d"}]`), wantStatus: 400},
		{name: "body string", body: []byte(`"x"`), wantStatus: 400},
		{name: "body null", body: []byte(`null`), wantStatus: 400},
		{name: "body truncated", body: []byte(`{"name":"e","channel":"c","data":"d"`), wantStatus: 400},
		{name: "body trailing garbage", body: []byte(`{"name":"e","channel":"c","data":"d"} {}`), wantStatus: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTrigger(tt.body, lim)
			status, msg := requestStatus(t, err)
			if status != tt.wantStatus {
				t.Fatalf("ParseTrigger(%.200s) status %d (%q), want %d", tt.body, status, msg, tt.wantStatus)
			}
			if tt.wantStatus != 0 {
				if msg == "" {
					t.Errorf("error has an empty message")
				}
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseTrigger(%.200s) =\n%+v\nwant\n%+v", tt.body, got, tt.want)
			}
		})
	}
}

func TestParseTriggerCustomLimits(t *testing.T) {
	lim := Limits{MaxChannels: 2, MaxDataBytes: 4, MaxBatch: 1, MaxEventName: 3}
	tests := []struct {
		body       string
		wantStatus int
	}{
		{`{"name":"abc","channels":["a","b"],"data":"1234"}`, 0},
		{`{"name":"abcd","channels":["a"],"data":"1"}`, 400},
		{`{"name":"abc","channels":["a","b","c"],"data":"1"}`, 400},
		{`{"name":"abc","channels":["a"],"data":"12345"}`, 413},
	}
	for _, tt := range tests {
		_, err := ParseTrigger([]byte(tt.body), lim)
		if status, msg := requestStatus(t, err); status != tt.wantStatus {
			t.Errorf("ParseTrigger(%s) status %d (%q), want %d", tt.body, status, msg, tt.wantStatus)
		}
	}
}

func TestTriggerValidate(t *testing.T) {
	ok := Trigger{Name: "e", Data: "d", Channels: []string{"c"}}
	tests := []struct {
		name       string
		mutate     func(*Trigger)
		wantStatus int
	}{
		{"ok", func(*Trigger) {}, 0},
		{"empty name", func(tr *Trigger) { tr.Name = "" }, 400},
		{"reserved name", func(tr *Trigger) { tr.Name = "pusher:x" }, 400},
		{"no channels", func(tr *Trigger) { tr.Channels = nil }, 400},
		{"bad channel", func(tr *Trigger) { tr.Channels = []string{"c", "d e"} }, 400},
		{"bad socket id", func(tr *Trigger) { tr.SocketID = "1" }, 400},
		{"good socket id", func(tr *Trigger) { tr.SocketID = "1.2" }, 0},
		{"big data", func(tr *Trigger) { tr.Data = strings.Repeat("x", DefaultLimits.MaxDataBytes+1) }, 413},
	}
	for _, tt := range tests {
		tr := ok
		tr.Channels = append([]string(nil), ok.Channels...)
		tt.mutate(&tr)
		if status, msg := requestStatus(t, tr.Validate(DefaultLimits)); status != tt.wantStatus {
			t.Errorf("%s: status %d (%q), want %d", tt.name, status, msg, tt.wantStatus)
		}
	}
}

func batchBody(t *testing.T, items []map[string]any) []byte {
	t.Helper()
	return body(t, map[string]any{"batch": items})
}

func batchItems(n int) []map[string]any {
	items := make([]map[string]any, n)
	for i := range items {
		items[i] = map[string]any{"name": fmt.Sprintf("event-%d", i), "channel": fmt.Sprintf("channel-%d", i), "data": fmt.Sprintf(`{"i":%d}`, i)}
	}
	return items
}

func TestParseBatch(t *testing.T) {
	lim := DefaultLimits

	t.Run("10 items", func(t *testing.T) {
		items := batchItems(10)
		items[3]["socket_id"] = "1.2"
		items[4]["info"] = "subscription_count"
		got, err := ParseBatch(batchBody(t, items), lim)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 10 {
			t.Fatalf("got %d triggers, want 10", len(got))
		}
		for i, tr := range got {
			want := Trigger{Name: fmt.Sprintf("event-%d", i), Data: fmt.Sprintf(`{"i":%d}`, i), Channels: []string{fmt.Sprintf("channel-%d", i)}}
			switch i {
			case 3:
				want.SocketID = "1.2"
			case 4:
				want.Info = "subscription_count"
			}
			if !reflect.DeepEqual(tr, want) {
				t.Errorf("batch[%d] = %+v, want %+v", i, tr, want)
			}
		}
	})

	t.Run("one item", func(t *testing.T) {
		got, err := ParseBatch([]byte(`{"batch":[{"name":"e","channel":"c","data":"d"}]}`), lim)
		if err != nil {
			t.Fatal(err)
		}
		if want := []Trigger{{Name: "e", Data: "d", Channels: []string{"c"}}}; !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})

	tests := []struct {
		name       string
		body       []byte
		wantStatus int
		wantInMsg  string
	}{
		{"empty batch", []byte(`{"batch":[]}`), 400, ""},
		{"no batch key", []byte(`{}`), 400, ""},
		{"batch null", []byte(`{"batch":null}`), 400, ""},
		{"batch object", []byte(`{"batch":{}}`), 400, ""},
		{"batch string", []byte(`{"batch":"x"}`), 400, ""},
		{"11 items", batchBody(t, batchItems(11)), 400, ""},
		{"body not JSON", []byte(`batch`), 400, ""},
		{"body array", []byte(`[]`), 400, ""},
		{"body empty", nil, 400, ""},
	}
	// An error in item i names batch[i].
	for _, i := range []int{0, 4, 9} {
		items := batchItems(10)
		delete(items[i], "data")
		tests = append(tests, struct {
			name       string
			body       []byte
			wantStatus int
			wantInMsg  string
		}{fmt.Sprintf("missing data in item %d", i), batchBody(t, items), 400, fmt.Sprintf("batch[%d]", i)})
	}
	bad := []struct {
		desc   string
		mutate func(map[string]any)
		status int
	}{
		{"reserved name", func(m map[string]any) { m["name"] = "pusher:x" }, 400},
		{"invalid channel", func(m map[string]any) { m["channel"] = "a b" }, 400},
		{"integer socket_id", func(m map[string]any) { m["socket_id"] = 1 }, 400},
		{"bad socket_id", func(m map[string]any) { m["socket_id"] = "abc" }, 400},
		{"integer info", func(m map[string]any) { m["info"] = 1 }, 400},
		{"no channel", func(m map[string]any) { delete(m, "channel") }, 400},
		{"data too large", func(m map[string]any) { m["data"] = strings.Repeat("x", lim.MaxDataBytes+1) }, 413},
	}
	for _, b := range bad {
		items := batchItems(3)
		b.mutate(items[2])
		tests = append(tests, struct {
			name       string
			body       []byte
			wantStatus int
			wantInMsg  string
		}{b.desc + " in item 2", batchBody(t, items), b.status, "batch[2]"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseBatch(tt.body, lim)
			status, msg := requestStatus(t, err)
			if status != tt.wantStatus {
				t.Fatalf("ParseBatch(%.200s) = %+v, status %d (%q), want status %d", tt.body, got, status, msg, tt.wantStatus)
			}
			if got != nil {
				t.Errorf("ParseBatch returned triggers %+v alongside an error", got)
			}
			if tt.wantInMsg != "" && !strings.Contains(msg, tt.wantInMsg) {
				t.Errorf("error %q does not mention %q", msg, tt.wantInMsg)
			}
		})
	}
}

// Regression (fixed): an item that is not a JSON object fails while decoding the
// whole body, so the error says "batch has the wrong type" instead of naming
// the offending item as every other per-item error does.
func TestParseBatchNonObjectItemNamesIndex(t *testing.T) {
	body := []byte(`{"batch":[{"name":"e","channel":"c","data":"d"},1]}`)
	_, err := ParseBatch(body, DefaultLimits)
	status, msg := requestStatus(t, err)
	if status != 400 {
		t.Fatalf("status %d (%q), want 400", status, msg)
	}
	if !strings.Contains(msg, "batch[1]") {
		t.Errorf("error for a non-object batch item: want a message mentioning %q, got %q", "batch[1]", msg)
	}
}
