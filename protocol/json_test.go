package protocol

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// checkAppendString asserts the properties AppendString promises for any
// input: valid JSON, a JSON string, no raw control characters or
// U+2028/U+2029, and the same decoded value encoding/json gives (which is the
// input itself when the input is valid UTF-8).
func checkAppendString(t *testing.T, s string) []byte {
	t.Helper()
	out := AppendString(nil, s)
	if !json.Valid(out) {
		t.Fatalf("AppendString(%q) = %s: not valid JSON", s, out)
	}
	var got string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("AppendString(%q) = %s: does not decode to a string: %v", s, out, err)
	}
	if utf8.ValidString(s) {
		if got != s {
			t.Fatalf("AppendString(%q) = %s decodes to %q, want the input", s, out, got)
		}
	} else {
		// encoding/json replaces every invalid byte with U+FFFD.
		ref, _ := json.Marshal(s)
		var want string
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("AppendString(%q) = %s decodes to %q, want %q", s, out, got, want)
		}
	}
	for i, c := range out {
		if c < 0x20 {
			t.Fatalf("AppendString(%q) = %q: raw control byte %#x at %d", s, out, c, i)
		}
	}
	if bytes.Contains(out, []byte("\u2028")) || bytes.Contains(out, []byte("\u2029")) {
		t.Fatalf("AppendString(%q) = %q: raw U+2028/U+2029", s, out)
	}
	if !utf8.Valid(out) {
		t.Fatalf("AppendString(%q) = %q: output is not valid UTF-8", s, out)
	}
	// Appending keeps what dst already holds.
	if pre := AppendString([]byte("x:"), s); !bytes.Equal(pre, append([]byte("x:"), out...)) {
		t.Fatalf("AppendString with a prefix = %q, want %q", pre, append([]byte("x:"), out...))
	}
	return out
}

func TestAppendString(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // exact bytes, when the case is about the exact form
	}{
		{"empty", "", `""`},
		{"plain", "hello", `"hello"`},
		{"quote", `say "hi"`, `"say \"hi\""`},
		{"backslash", `App\Events\X`, `"App\\Events\\X"`},
		{"slash not escaped", "a/b", `"a/b"`},
		{"newline tab cr", "a\nb\tc\rd", `"a\nb\tc\rd"`},
		{"nul", "\x00", `"\u0000"`},
		{"bell", "\x07", `"\u0007"`},
		{"backspace formfeed", "\b\f", `"\u0008\u000c"`},
		{"unit separator", "\x1f", `"\u001f"`},
		{"del left alone", "\x7f", "\"\x7f\""},
		{"html not escaped", "<script>&</script>", `"<script>&</script>"`},
		{"U+2028", "a\u2028b", `"a\u2028b"`},
		{"U+2029", "a\u2029b", `"a\u2029b"`},
		{"emoji", "hi 👋🏽", `"hi 👋🏽"`},
		{"non-ascii kept raw", "café ñ 日本", `"café ñ 日本"`},
		{"json inside", `{"some":"data"}`, `"{\"some\":\"data\"}"`},
		{"U+FFFD itself", "\uFFFD", "\"\uFFFD\""},
		{"invalid byte", "a\xffb", `"a\ufffdb"`},
		{"lone continuation", "\x80", `"\ufffd"`},
		{"truncated rune", "\xe2\x82", `"\ufffd\ufffd"`},
		{"surrogate encoded in utf-8", "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},
		{"overlong slash", "\xc0\xaf", `"\ufffd\ufffd"`},
		{"mixed", "\"\\\n\u2028<>&\xff😀", `"\"\\\n\u2028<>&\ufffd😀"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := checkAppendString(t, tt.in)
			if tt.want != "" && string(out) != tt.want {
				t.Errorf("AppendString(%q) = %s, want %s", tt.in, out, tt.want)
			}
		})
	}
}

func TestAppendStringAllBytes(t *testing.T) {
	var b strings.Builder
	for c := 0; c < 256; c++ {
		b.WriteByte(byte(c))
	}
	checkAppendString(t, b.String())
	for c := 0; c < 256; c++ {
		checkAppendString(t, string([]byte{byte(c)}))
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{
		"", "hello", `"`, `\`, "\x00", "\x1f", "\x7f", "\n\r\t",
		"<>&", "\u2028\u2029", "👋🏽", "café", "\xff", "\xe2\x82", "\xed\xa0\x80",
		`{"event":"pusher:subscribe","data":{"channel":"x"}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		checkAppendString(t, s)
	})
}
