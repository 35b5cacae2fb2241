package protocol

import (
	"regexp"
	"strings"
	"testing"
)

// channelNameRe is Pusher's rule for channel names, written independently
// of ValidChannelName: the charset, behind an optional '#', 164 bytes at
// most with the '#'.
var channelNameRe = regexp.MustCompile(`^#?[A-Za-z0-9_\-=@,.;]+$`)

var socketIDRe = regexp.MustCompile(`^[0-9]{1,20}\.[0-9]{1,20}$`)

// FuzzChannelName checks channel names, what a name makes a channel, the
// string a subscription's auth signs, and socket ids. Subjects and keys
// derived from names are fuzzed where they are made (internal/route,
// internal/cluster).
func FuzzChannelName(f *testing.F) {
	f.Add("private-encrypted-cache-orders", "123.456", `{"user_id":1}`)
	f.Add("#server-to-user-42", "1.1", "")
	f.Fuzz(func(t *testing.T, name, socketID, channelData string) {
		valid := ValidChannelName(name)
		if want := len(name) <= MaxChannelNameLength && channelNameRe.MatchString(name); valid != want {
			t.Fatalf("ValidChannelName(%q) = %v, want %v", name, valid, want)
		}
		checkKind(t, name)
		if want := socketIDRe.MatchString(socketID); ValidSocketID(socketID) != want {
			t.Fatalf("ValidSocketID(%q) = %v, want %v", socketID, !want, want)
		}
		checkChannelAuthMessage(t, socketID, name, channelData, true)
		checkChannelAuthMessage(t, socketID, name, channelData, false)
		if valid {
			// Names reach clients and logs inside JSON strings.
			if got := string(AppendString(nil, name)); got != `"`+name+`"` {
				t.Fatalf("valid name %q needs escaping: %s", name, got)
			}
		}
	})
}

// checkKind compares ClassifyChannel with a table of Pusher's prefixes,
// longest first.
func checkKind(t *testing.T, name string) {
	want := ChannelKind{}
	for _, p := range []struct {
		prefix string
		kind   ChannelKind
	}{
		{"private-encrypted-cache-", ChannelKind{Auth: AuthPrivate, Encrypted: true, Cache: true}},
		{"private-encrypted-", ChannelKind{Auth: AuthPrivate, Encrypted: true}},
		{"private-cache-", ChannelKind{Auth: AuthPrivate, Cache: true}},
		{"presence-cache-", ChannelKind{Auth: AuthPresence, Cache: true}},
		{"private-", ChannelKind{Auth: AuthPrivate}},
		{"presence-", ChannelKind{Auth: AuthPresence}},
		{"cache-", ChannelKind{Cache: true}},
		{"#", ChannelKind{Auth: AuthUser}},
	} {
		if strings.HasPrefix(name, p.prefix) {
			want = p.kind
			break
		}
	}
	if got := ClassifyChannel(name); got != want {
		t.Fatalf("ClassifyChannel(%q) = %+v, want %+v", name, got, want)
	}
}

// checkChannelAuthMessage checks that, for the names the gateway accepts,
// the signed string is unambiguous: it gives back its parts, and a
// channel's signature can never pass for a sign-in's.
func checkChannelAuthMessage(t *testing.T, socketID, channel, channelData string, withData bool) {
	if !ValidSocketID(socketID) || !ValidChannelName(channel) {
		return
	}
	msg := ChannelAuthMessage(socketID, channel, channelData, withData)
	parts := strings.SplitN(msg, ":", 3)
	switch {
	case parts[0] != socketID || parts[1] != channel,
		withData && (len(parts) != 3 || parts[2] != channelData),
		!withData && len(parts) != 2:
		t.Fatalf("ChannelAuthMessage(%q, %q, %q, %v) = %q does not split back", socketID, channel, channelData, withData, msg)
	}
	if strings.HasPrefix(msg, socketID+"::user::") {
		t.Fatalf("channel auth message %q has the form of a sign-in's", msg)
	}
}
