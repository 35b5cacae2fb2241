package protocol

import (
	"strings"
	"testing"
)

func TestValidChannelName(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"simple", "test-channel", true},
		{"every allowed char", "azAZ09_-=@,.;", true},
		{"single char", "a", true},
		{"private", "private-foobar", true},
		{"presence", "presence-room.1", true},
		{"encrypted cache", "private-encrypted-cache-x", true},
		{"server to user", "#server-to-user-1", true},
		{"hash then name", "#a", true},
		{"exactly 164", strings.Repeat("a", 164), true},
		{"165", strings.Repeat("a", 165), false},
		{"hash plus 163", "#" + strings.Repeat("a", 163), true},
		{"hash plus 164", "#" + strings.Repeat("a", 164), false},
		{"164 with prefix", "private-" + strings.Repeat("a", 164-len("private-")), true},
		{"165 with prefix", "private-" + strings.Repeat("a", 165-len("private-")), false},
		{"empty", "", false},
		{"hash alone", "#", false},
		{"double hash", "##a", false},
		{"hash in the middle", "a#b", false},
		{"space", "a b", false},
		{"slash", "a/b", false},
		{"colon", "a:b", false},
		{"star", "a*", false},
		{"plus", "a+b", false},
		{"quote", `a"b`, false},
		{"backslash", `a\b`, false},
		{"newline", "a\n", false},
		{"nul", "a\x00", false},
		{"non-ascii", "café", false},
		{"invalid utf-8", "a\xff", false},
		{"App\\Events style", `App\Events\X`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidChannelName(tt.in); got != tt.want {
				t.Errorf("ValidChannelName(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestClassifyChannel(t *testing.T) {
	tests := []struct {
		in   string
		want ChannelKind
	}{
		{"test-channel", ChannelKind{}},
		{"private-x", ChannelKind{Auth: AuthPrivate}},
		{"private-encrypted-x", ChannelKind{Auth: AuthPrivate, Encrypted: true}},
		{"private-cache-x", ChannelKind{Auth: AuthPrivate, Cache: true}},
		{"private-encrypted-cache-x", ChannelKind{Auth: AuthPrivate, Encrypted: true, Cache: true}},
		{"presence-x", ChannelKind{Auth: AuthPresence}},
		{"presence-cache-x", ChannelKind{Auth: AuthPresence, Cache: true}},
		{"cache-x", ChannelKind{Cache: true}},
		{"#server-to-user-1", ChannelKind{Auth: AuthUser}},
		{"#server-to-user-abc@example.com", ChannelKind{Auth: AuthUser}},
		// '#' channels are server-internal: never open to anyone.
		{"#other", ChannelKind{Auth: AuthUser}},

		// Reverb deviations: Resound matches the exact, hyphenated prefixes.
		{"privateer", ChannelKind{}},
		{"private", ChannelKind{}},
		{"presenter", ChannelKind{}},
		{"presence", ChannelKind{}},
		{"cached", ChannelKind{}},
		{"cache", ChannelKind{}},
		{"cachefoo", ChannelKind{}},
		{"Private-x", ChannelKind{}},
		{"PRESENCE-x", ChannelKind{}},
		{"x-private-y", ChannelKind{}},
		{"encrypted-x", ChannelKind{}},

		// Prefixes that only almost match a longer one.
		{"private-cache", ChannelKind{Auth: AuthPrivate}},
		{"private-encrypted", ChannelKind{Auth: AuthPrivate}},
		{"private-encryptedx", ChannelKind{Auth: AuthPrivate}},
		{"private-encrypted-cachex", ChannelKind{Auth: AuthPrivate, Encrypted: true}},
		{"presence-cache", ChannelKind{Auth: AuthPresence}},
		{"presence-cachex", ChannelKind{Auth: AuthPresence}},
		{"cache-private-x", ChannelKind{Cache: true}},

		// The bare prefixes themselves.
		{PrefixPrivate, ChannelKind{Auth: AuthPrivate}},
		{PrefixPrivateEncrypted, ChannelKind{Auth: AuthPrivate, Encrypted: true}},
		{PrefixPresence, ChannelKind{Auth: AuthPresence}},
		{PrefixCache, ChannelKind{Cache: true}},
		{PrefixPrivateCache, ChannelKind{Auth: AuthPrivate, Cache: true}},
		{PrefixEncryptedCache, ChannelKind{Auth: AuthPrivate, Encrypted: true, Cache: true}},
		{PrefixPresenceCache, ChannelKind{Auth: AuthPresence, Cache: true}},
		{PrefixServerToUser, ChannelKind{Auth: AuthUser}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := ClassifyChannel(tt.in); got != tt.want {
				t.Errorf("ClassifyChannel(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}
