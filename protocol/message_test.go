package protocol

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestParseClientMessage(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    ClientMessage
		wantErr bool
	}{
		{
			name: "pusher-js subscribe",
			in:   `{"event":"pusher:subscribe","data":{"channel":"x"}}`,
			want: ClientMessage{Event: EventSubscribe, Data: json.RawMessage(`{"channel":"x"}`)},
		},
		{
			name: "pusher-js private subscribe",
			in:   `{"event":"pusher:subscribe","data":{"auth":"k:s","channel_data":"{\"user_id\":1}","channel":"presence-x"}}`,
			want: ClientMessage{Event: EventSubscribe, Data: json.RawMessage(`{"auth":"k:s","channel_data":"{\"user_id\":1}","channel":"presence-x"}`)},
		},
		{
			name: "pusher-js ping",
			in:   `{"event":"pusher:ping","data":{}}`,
			want: ClientMessage{Event: EventPing, Data: json.RawMessage(`{}`)},
		},
		{
			name: "pong without data",
			in:   `{"event":"pusher:pong"}`,
			want: ClientMessage{Event: EventPong},
		},
		{
			name: "client event",
			in:   `{"event":"client-typing","channel":"private-x","data":{"id":1}}`,
			want: ClientMessage{Event: "client-typing", Channel: "private-x", HasChannel: true, Data: json.RawMessage(`{"id":1}`)},
		},
		{
			name: "empty channel is present",
			in:   `{"event":"client-x","channel":"","data":"s"}`,
			want: ClientMessage{Event: "client-x", Channel: "", HasChannel: true, Data: json.RawMessage(`"s"`)},
		},
		{
			name: "string data (Java SDK)",
			in:   `{"event":"pusher:subscribe","data":"{\"channel\":\"x\"}"}`,
			want: ClientMessage{Event: EventSubscribe, Data: json.RawMessage(`"{\"channel\":\"x\"}"`)},
		},
		{
			name: "channel null treated as absent",
			in:   `{"event":"client-x","channel":null,"data":{}}`,
			want: ClientMessage{Event: "client-x", Data: json.RawMessage(`{}`)},
		},
		{
			name: "data null treated as absent",
			in:   `{"event":"pusher:ping","data":null}`,
			want: ClientMessage{Event: EventPing},
		},
		{
			name: "escaped event name",
			in:   `{"event":"pusher:\u0070ing"}`,
			want: ClientMessage{Event: EventPing},
		},
		{
			name: "unknown keys ignored",
			in:   `{"event":"pusher:ping","extra":[1,2],"data":{}}`,
			want: ClientMessage{Event: EventPing, Data: json.RawMessage(`{}`)},
		},
		{
			name: "surrounding whitespace",
			in:   " \n{\"event\":\"pusher:ping\"}\n ",
			want: ClientMessage{Event: EventPing},
		},
		{name: "not JSON", in: "Hi", wantErr: true},
		{name: "empty frame", in: "", wantErr: true},
		{name: "truncated", in: `{"event":"pusher:ping"`, wantErr: true},
		{name: "trailing garbage", in: `{"event":"pusher:ping"}x`, wantErr: true},
		{name: "array", in: `[{"event":"pusher:ping"}]`, wantErr: true},
		{name: "string", in: `"pusher:ping"`, wantErr: true},
		{name: "number", in: `1`, wantErr: true},
		{name: "null", in: `null`, wantErr: true},
		{name: "empty object", in: `{}`, wantErr: true},
		{name: "missing event", in: `{"channel":"x","data":{}}`, wantErr: true},
		{name: "event array", in: `{"event":[]}`, wantErr: true},
		{name: "event number", in: `{"event":1}`, wantErr: true},
		{name: "event object", in: `{"event":{}}`, wantErr: true},
		{name: "event null", in: `{"event":null}`, wantErr: true},
		{name: "event bool", in: `{"event":true}`, wantErr: true},
		{name: "channel array", in: `{"event":"x","channel":[]}`, wantErr: true},
		{name: "channel number", in: `{"event":"x","channel":1}`, wantErr: true},
		{name: "channel object", in: `{"event":"x","channel":{}}`, wantErr: true},
		{name: "channel bool", in: `{"event":"x","channel":false}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseClientMessage([]byte(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseClientMessage(%s) = %+v, want an error", tt.in, got)
				}
				if !errors.Is(err, ErrInvalidMessage) {
					t.Errorf("error = %v, want ErrInvalidMessage", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseClientMessage(%s): %v", tt.in, err)
			}
			if got.Event != tt.want.Event || got.Channel != tt.want.Channel || got.HasChannel != tt.want.HasChannel {
				t.Errorf("ParseClientMessage(%s) = %+v, want %+v", tt.in, got, tt.want)
			}
			if (got.Data == nil) != (tt.want.Data == nil) || string(got.Data) != string(tt.want.Data) {
				t.Errorf("Data = %q (nil %v), want %q (nil %v)", got.Data, got.Data == nil, tt.want.Data, tt.want.Data == nil)
			}
		})
	}
	if MessageInvalidFormat != "Invalid message format" {
		t.Errorf("MessageInvalidFormat = %q, want Reverb's %q", MessageInvalidFormat, "Invalid message format")
	}
}

func TestParseSubscribeData(t *testing.T) {
	tests := []struct {
		name    string
		data    string // raw JSON of the data field; "<nil>" for nil
		want    SubscribeData
		wantErr bool
	}{
		{name: "public", data: `{"channel":"x"}`, want: SubscribeData{Channel: "x"}},
		{name: "empty channel (Reverb allows it)", data: `{"channel":""}`, want: SubscribeData{Channel: ""}},
		{name: "private", data: `{"auth":"k:s","channel":"private-x"}`, want: SubscribeData{Channel: "private-x", Auth: "k:s"}},
		{
			name: "presence",
			data: `{"auth":"k:s","channel_data":"{\"user_id\":10,\"user_info\":{\"name\":\"Mr. Channels\"}}","channel":"presence-x"}`,
			want: SubscribeData{Channel: "presence-x", Auth: "k:s", ChannelData: `{"user_id":10,"user_info":{"name":"Mr. Channels"}}`, HasChannelData: true},
		},
		{
			name: "channel_data kept byte for byte",
			data: `{"channel":"presence-x","auth":"k:s","channel_data":"{ \"user_id\" : \"a\\/b\" }"}`,
			want: SubscribeData{Channel: "presence-x", Auth: "k:s", ChannelData: `{ "user_id" : "a\/b" }`, HasChannelData: true},
		},
		{name: "empty channel_data is present", data: `{"channel":"presence-x","channel_data":""}`, want: SubscribeData{Channel: "presence-x", HasChannelData: true}},
		{name: "auth null", data: `{"channel":"x","auth":null}`, want: SubscribeData{Channel: "x"}},
		{name: "channel_data null", data: `{"channel":"x","channel_data":null}`, want: SubscribeData{Channel: "x"}},
		{name: "extra keys ignored", data: `{"channel":"x","foo":[1]}`, want: SubscribeData{Channel: "x"}},
		{
			name: "string-encoded (Java SDK)",
			data: `"{\"channel\":\"private-x\",\"auth\":\"k:s\"}"`,
			want: SubscribeData{Channel: "private-x", Auth: "k:s"},
		},
		{
			name: "string-encoded presence",
			data: `"{\"channel\":\"presence-x\",\"auth\":\"k:s\",\"channel_data\":\"{\\\"user_id\\\":1}\"}"`,
			want: SubscribeData{Channel: "presence-x", Auth: "k:s", ChannelData: `{"user_id":1}`, HasChannelData: true},
		},
		{name: "nil data", data: "<nil>", wantErr: true},
		{name: "null data", data: `null`, wantErr: true},
		{name: "not JSON string", data: `"sfsfsfs"`, wantErr: true},
		{name: "string holding a string", data: `"\"x\""`, wantErr: true},
		{name: "string holding an array", data: `"[1]"`, wantErr: true},
		{name: "array", data: `[{"channel":"x"}]`, wantErr: true},
		{name: "number", data: `1`, wantErr: true},
		{name: "empty object", data: `{}`, wantErr: true},
		{name: "channel null", data: `{"channel":null}`, wantErr: true},
		{name: "channel number", data: `{"channel":1}`, wantErr: true},
		{name: "channel array", data: `{"channel":["x"]}`, wantErr: true},
		{name: "channel object", data: `{"channel":{}}`, wantErr: true},
		{name: "auth number", data: `{"channel":"private-x","auth":1}`, wantErr: true},
		{name: "auth object", data: `{"channel":"private-x","auth":{}}`, wantErr: true},
		{name: "auth bool", data: `{"channel":"private-x","auth":true}`, wantErr: true},
		{name: "channel_data object", data: `{"channel":"presence-x","auth":"k:s","channel_data":{"user_id":1}}`, wantErr: true},
		{name: "channel_data number", data: `{"channel":"presence-x","channel_data":1}`, wantErr: true},
		{name: "string-encoded with bad channel", data: `"{\"channel\":1}"`, wantErr: true},
		{name: "truncated object", data: `{"channel":"x"`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var raw json.RawMessage
			if tt.data != "<nil>" {
				raw = json.RawMessage(tt.data)
			}
			got, err := ParseSubscribeData(raw)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseSubscribeData(%s) = %+v, want an error", tt.data, got)
				}
				if !errors.Is(err, ErrInvalidMessage) {
					t.Errorf("error = %v, want ErrInvalidMessage", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSubscribeData(%s): %v", tt.data, err)
			}
			if got != tt.want {
				t.Errorf("ParseSubscribeData(%s) = %+v, want %+v", tt.data, got, tt.want)
			}
		})
	}
}

// The data ParseClientMessage returns feeds ParseSubscribeData directly.
func TestParseSubscribeFromClientMessage(t *testing.T) {
	for _, frame := range []string{
		`{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"private-x"}}`,
		`{"event":"pusher:subscribe","data":"{\"auth\":\"k:s\",\"channel\":\"private-x\"}"}`,
	} {
		m, err := ParseClientMessage([]byte(frame))
		if err != nil {
			t.Fatalf("ParseClientMessage(%s): %v", frame, err)
		}
		d, err := ParseSubscribeData(m.Data)
		if err != nil {
			t.Fatalf("ParseSubscribeData(%s): %v", m.Data, err)
		}
		if want := (SubscribeData{Channel: "private-x", Auth: "k:s"}); d != want {
			t.Errorf("%s: got %+v, want %+v", frame, d, want)
		}
	}
}

func TestParseUnsubscribeData(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    string
		wantErr bool
	}{
		{name: "object", data: `{"channel":"x"}`, want: "x"},
		{name: "empty channel", data: `{"channel":""}`, want: ""},
		{name: "extra keys", data: `{"channel":"private-x","auth":"ignored"}`, want: "private-x"},
		{name: "string-encoded", data: `"{\"channel\":\"presence-x\"}"`, want: "presence-x"},
		{name: "nil", data: "<nil>", wantErr: true},
		{name: "null", data: `null`, wantErr: true},
		{name: "not JSON string", data: `"sfsfsfs"`, wantErr: true},
		{name: "array", data: `[]`, wantErr: true},
		{name: "number", data: `7`, wantErr: true},
		{name: "missing channel", data: `{}`, wantErr: true},
		{name: "channel null", data: `{"channel":null}`, wantErr: true},
		{name: "channel number", data: `{"channel":1}`, wantErr: true},
		{name: "channel array", data: `{"channel":[]}`, wantErr: true},
		{name: "channel object", data: `{"channel":{}}`, wantErr: true},
		{name: "string-encoded bad channel", data: `"{\"channel\":[]}"`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var raw json.RawMessage
			if tt.data != "<nil>" {
				raw = json.RawMessage(tt.data)
			}
			got, err := ParseUnsubscribeData(raw)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseUnsubscribeData(%s) = %q, want an error", tt.data, got)
				}
				if !errors.Is(err, ErrInvalidMessage) {
					t.Errorf("error = %v, want ErrInvalidMessage", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseUnsubscribeData(%s): %v", tt.data, err)
			}
			if got != tt.want {
				t.Errorf("ParseUnsubscribeData(%s) = %q, want %q", tt.data, got, tt.want)
			}
		})
	}
}
