package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseTrigger fuzzes the body of POST /apps/{id}/events under
// Pusher's limits. The corpus holds what pusher-http-php (Laravel's
// broadcaster) and the pusher npm SDK send.
func FuzzParseTrigger(f *testing.F) {
	f.Add([]byte(`{"name":"App\\Events\\OrderShipped","channels":["private-orders.1"],"data":"{\"id\":1}","socket_id":"123.456"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		tr, err := ParseTrigger(body, DefaultLimits)
		if err != nil {
			checkRequestError(t, err)
			return
		}
		checkTrigger(t, body, tr, DefaultLimits)
		// What the API accepted, written out again, is accepted as the
		// same trigger.
		again, err := ParseTrigger(mustMarshal(t, tr), DefaultLimits)
		if err != nil || !reflect.DeepEqual(again, tr) {
			t.Fatalf("trigger %+v re-encoded parsed as %+v, %v", tr, again, err)
		}
	})
}

// FuzzParseBatch fuzzes the body of POST /apps/{id}/batch_events.
func FuzzParseBatch(f *testing.F) {
	f.Add([]byte(`{"batch":[{"name":"a","channel":"c","data":"1"},{"name":"b","channel":"presence-c","data":"{}","info":"user_count"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		batch, err := ParseBatch(body, DefaultLimits)
		if err != nil {
			checkRequestError(t, err)
			return
		}
		if len(batch) == 0 || len(batch) > DefaultLimits.MaxBatch {
			t.Fatalf("accepted a batch of %d", len(batch))
		}
		for _, tr := range batch {
			checkTrigger(t, body, tr, DefaultLimits)
		}
		again, err := ParseBatch(mustMarshal(t, map[string]any{"batch": batch}), DefaultLimits)
		if err != nil || !reflect.DeepEqual(again, batch) {
			t.Fatalf("batch %+v re-encoded parsed as %+v, %v", batch, again, err)
		}
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkRequestError: every refusal is a RequestError the API can answer
// with, 400 or 413.
func checkRequestError(t *testing.T, err error) {
	var re *RequestError
	if !errors.As(err, &re) || (re.Status != 400 && re.Status != 413) || re.Message == "" {
		t.Fatalf("refused with %v (%T), want a RequestError of 400 or 413", err, err)
	}
}

// checkTrigger checks an accepted trigger against the limits, independently
// of Validate.
func checkTrigger(t *testing.T, body []byte, tr Trigger, lim Limits) {
	if !json.Valid(bytes.TrimSpace(body)) {
		t.Fatalf("accepted a body that is not JSON: %q", body)
	}
	// encoding/json would quietly turn invalid UTF-8 into U+FFFD; the API
	// refuses it instead (issue 9: "API events with invalid UTF-8 get 400").
	if !utf8.Valid(body) {
		t.Fatalf("accepted a body that is not UTF-8: %q", body)
	}
	if err := tr.Validate(lim); err != nil {
		t.Fatalf("accepted %+v, which does not validate: %v", tr, err)
	}
	switch {
	case tr.Name == "" || len(tr.Name) > lim.MaxEventName || strings.HasPrefix(tr.Name, "pusher"):
		t.Fatalf("accepted event name %q", tr.Name)
	case len(tr.Data) > lim.MaxDataBytes:
		t.Fatalf("accepted %d bytes of data", len(tr.Data))
	case len(tr.Channels) == 0 || len(tr.Channels) > lim.MaxChannels:
		t.Fatalf("accepted %d channels", len(tr.Channels))
	case tr.SocketID != "" && !socketIDRe.MatchString(tr.SocketID):
		t.Fatalf("accepted socket_id %q", tr.SocketID)
	}
	for _, ch := range tr.Channels {
		if !channelNameRe.MatchString(ch) || len(ch) > MaxChannelNameLength {
			t.Fatalf("accepted channel %q", ch)
		}
	}
	// Everything a worker puts into a frame must be UTF-8.
	for _, s := range []string{tr.Name, tr.Data, tr.Info} {
		if !utf8.ValidString(s) {
			t.Fatalf("accepted %q, not UTF-8", s)
		}
	}
	if frame := AppendChannelEvent(nil, tr.Name, tr.Channels[0], tr.Data, ""); !json.Valid(frame) || !utf8.Valid(frame) {
		t.Fatalf("event frame %q is not UTF-8 JSON", frame)
	}
}
