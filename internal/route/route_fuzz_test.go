package route

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// tokenRe is what EscapeToken may produce: bytes NATS allows in a subject
// token and that are no wildcard, or '~' and two upper-case hex digits.
var tokenRe = regexp.MustCompile(`^(?:[A-Za-z0-9_\-=@,;#]|~[0-9A-F]{2})+$`)

// FuzzEscape checks that the subject token of any name is a single valid
// NATS token that gives the name back, that clean names are left as they
// are, and that Unescape takes any string without panicking.
func FuzzEscape(f *testing.F) {
	for _, s := range []string{"orders", "private-user.1", "a~b", "#server-to-user-42", "", "~", "~2E", "ünï", "x*y>z", "tab\there"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok := EscapeToken(s)
		if !tokenRe.MatchString(tok) && tok != "~" {
			t.Fatalf("EscapeToken(%q) = %q is not one token", s, tok)
		}
		if tok == "~" && s != "" {
			t.Fatalf("EscapeToken(%q) = %q, the empty name's token", s, tok)
		}
		if len(tok) > 3*len(s) && s != "" {
			t.Fatalf("EscapeToken(%q) = %q is over three times as long", s, tok)
		}
		back, err := UnescapeToken(tok)
		if err != nil || back != s {
			t.Fatalf("UnescapeToken(EscapeToken(%q)) = %q, %v", s, back, err)
		}
		clean := s != ""
		for i := 0; i < len(s); i++ {
			clean = clean && safeByte(s[i])
		}
		if clean && tok != s {
			t.Fatalf("clean name %q escaped to %q", s, tok)
		}
		// A delivery subject has exactly its four tokens.
		subj := Subject(s, s)
		if parts := strings.Split(subj, "."); len(parts) != 4 || parts[2] != tok || parts[3] != tok {
			t.Fatalf("Subject(%q, %q) = %q", s, s, subj)
		}
		// Any string as a token: an error or a name, never a panic; a name
		// it gives has a token of its own that reads back the same.
		if name, err := UnescapeToken(s); err == nil {
			if again, err := UnescapeToken(EscapeToken(name)); err != nil || again != name {
				t.Fatalf("%q read as %q, whose token reads as %q, %v", s, name, again, err)
			}
		}
	})
}

// FuzzDelivery checks ParseDelivery on arbitrary bytes (no panic, slices
// only within the message, the same bytes when encoded again) and the
// AppendDelivery/ParseDelivery round trip.
func FuzzDelivery(f *testing.F) {
	frame := []byte("\x81\x1b{\"event\":\"e\",\"channel\":\"c\"}")
	f.Add(AppendDelivery(nil, Delivery{Seq: 42, Event: 3, ExcludeSocketID: "123.456", Frame: frame}), uint64(42), uint8(3), "123.456", frame)
	f.Add([]byte{}, uint64(0), EventPresence, "", []byte{})
	f.Fuzz(func(t *testing.T, msg []byte, seq uint64, event uint8, sid string, frame []byte) {
		if env, err := ParseDelivery(msg); err == nil {
			n := len(env.ExcludeSocketID)
			if 11+n+len(env.Frame) != len(msg) {
				t.Fatalf("parsed %d+%d bytes out of %d", n, len(env.Frame), len(msg))
			}
			within(t, "ExcludeSocketID", msg, 11, env.ExcludeSocketID)
			within(t, "Frame", msg, 11+n, env.Frame)
			again := AppendDelivery(nil, Delivery{Seq: env.Seq, Event: env.Event, Repeat: env.Repeat, ExcludeSocketID: string(env.ExcludeSocketID), Frame: env.Frame})
			if !bytes.Equal(again, msg) {
				t.Fatalf("%x parsed as %+v encodes as %x", msg, env, again)
			}
		}

		repeat := event != EventPresence && event&repeatFlag != 0
		if repeat {
			event &^= repeatFlag // the flag's bit is the Repeat field
		}
		d := Delivery{Seq: seq, Event: event, Repeat: repeat, ExcludeSocketID: sid, Frame: frame}
		prefix := []byte("prefix")
		out := AppendDelivery(prefix, d)
		if !bytes.Equal(out[:len(prefix)], []byte("prefix")) {
			t.Fatalf("AppendDelivery overwrote dst: %q", out[:len(prefix)])
		}
		env, err := ParseDelivery(out[len(prefix):])
		wantSID := sid
		if len(sid) > 255 {
			wantSID = "" // longer than any socket id; AppendDelivery drops it
		}
		if err != nil || env.Seq != seq || env.Event != event || env.Repeat != repeat || string(env.ExcludeSocketID) != wantSID || !bytes.Equal(env.Frame, frame) {
			t.Fatalf("%+v round-tripped as %+v, %v", d, env, err)
		}
	})
}

// within fails unless part is msg[off:off+len(part)] and reaches no byte
// past it, not even through its capacity: appending to one part must not
// overwrite the next, nor what follows the message in its buffer.
func within(t *testing.T, name string, msg []byte, off int, part []byte) {
	t.Helper()
	if cap(part) != len(part) {
		t.Fatalf("%s has capacity %d past its length %d", name, cap(part), len(part))
	}
	if len(part) > 0 && &part[0] != &msg[off] {
		t.Fatalf("%s is not msg[%d:]", name, off)
	}
}
