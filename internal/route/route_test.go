package route

import (
	"bytes"
	"strings"
	"testing"
)

func TestSubjectEscapesWhatNATSForbids(t *testing.T) {
	cases := map[string]string{
		"orders":               "resound.deliver.1.orders",
		"private-user.1":       "resound.deliver.1.private-user~2E1",
		"a~b":                  "resound.deliver.1.a~7Eb",
		"#server-to-user-42":   "resound.deliver.1.#server-to-user-42",
		"presence-room=1@x,y;": "resound.deliver.1.presence-room=1@x,y;",
	}
	for ch, want := range cases {
		if got := Subject("1", ch); got != want {
			t.Errorf("Subject(1, %q) = %q, want %q", ch, got, want)
		}
	}
	if got := Subject("app.2", "c"); got != "resound.deliver.app~2E2.c" {
		t.Errorf("app id not escaped: %q", got)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	for _, s := range []string{"a", "a.b.c", "~", "~2E", "x*y>z", "tab\there", "ünï"} {
		tok := EscapeToken(s)
		if strings.ContainsAny(tok, ".*> \t") {
			t.Errorf("EscapeToken(%q) = %q holds a forbidden byte", s, tok)
		}
		back, err := UnescapeToken(tok)
		if err != nil || back != s {
			t.Errorf("round trip of %q: %q, %v", s, back, err)
		}
	}
	if EscapeToken("a.b") == EscapeToken("a~2Eb") {
		t.Error("distinct names share a token")
	}
}

func TestDeliveryRoundTrip(t *testing.T) {
	frame := []byte{0x81, 3, 'a', 'b', 'c'}
	b := AppendDelivery(nil, Delivery{Seq: 1 << 40, Event: 3, ExcludeSocketID: "123.456", Frame: frame})
	e, err := ParseDelivery(b)
	if err != nil || e.Seq != 1<<40 || e.Event != 3 || string(e.ExcludeSocketID) != "123.456" || !bytes.Equal(e.Frame, frame) {
		t.Fatalf("got %+v %v", e, err)
	}
	if e.ID() == 0 || e.ID() == (Envelope{Seq: 1 << 40, Event: 2}).ID() || (Envelope{Event: 5}).ID() != 0 {
		t.Fatal("delivery ids do not tell events apart")
	}
	if e.Repeat {
		t.Fatal("a first delivery reads as a repeat")
	}
	// A repeat keeps its event index and id; a presence change is never one.
	r, err := ParseDelivery(AppendDelivery(nil, Delivery{Seq: 1 << 40, Event: 3, Repeat: true, Frame: frame}))
	if err != nil || !r.Repeat || r.Event != 3 || r.ID() != e.ID() {
		t.Fatalf("repeat: got %+v %v", r, err)
	}
	p, err := ParseDelivery(AppendDelivery(nil, Delivery{Seq: 7, Event: EventPresence, Repeat: true, Frame: frame}))
	if err != nil || p.Repeat || p.Event != EventPresence {
		t.Fatalf("presence: got %+v %v", p, err)
	}
	if _, err := ParseDelivery(b[:5]); err == nil {
		t.Fatal("truncated envelope accepted")
	}
	if _, err := ParseDelivery(append([]byte{9}, b[1:]...)); err == nil {
		t.Fatal("unknown version accepted")
	}
	if _, err := ParseDelivery(b[:13]); err == nil {
		t.Fatal("envelope shorter than its socket id accepted")
	}
}
