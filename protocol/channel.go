package protocol

import "strings"

// MaxChannelNameLength is Pusher's limit, prefix included.
const MaxChannelNameLength = 164

// Channel name prefixes. Unlike Reverb, which matches "private" or "cache"
// without the hyphen (so "privateer" needs auth), Resound matches the exact
// prefixes Pusher documents.
const (
	PrefixPrivate          = "private-"
	PrefixPrivateEncrypted = "private-encrypted-"
	PrefixPresence         = "presence-"
	PrefixCache            = "cache-"
	PrefixPrivateCache     = "private-cache-"
	PrefixEncryptedCache   = "private-encrypted-cache-"
	PrefixPresenceCache    = "presence-cache-"
	PrefixServerToUser     = "#server-to-user-"
)

// ChannelAuth says what a subscription to a channel must prove.
type ChannelAuth uint8

const (
	// AuthNone: anyone may subscribe.
	AuthNone ChannelAuth = iota
	// AuthPrivate: a signature over socket_id:channel.
	AuthPrivate
	// AuthPresence: a signature over socket_id:channel:channel_data.
	AuthPresence
	// AuthUser: only the signed-in user the channel names
	// (#server-to-user-{id}).
	AuthUser
)

// ChannelKind is what a channel's name makes it.
type ChannelKind struct {
	Auth      ChannelAuth
	Encrypted bool // private-encrypted-: data is relayed untouched, no client events
	Cache     bool // the last triggered event is kept and replayed on subscribe
}

// ClassifyChannel returns the kind of channel a valid name denotes.
func ClassifyChannel(name string) ChannelKind {
	switch {
	case strings.HasPrefix(name, PrefixEncryptedCache):
		return ChannelKind{Auth: AuthPrivate, Encrypted: true, Cache: true}
	case strings.HasPrefix(name, PrefixPrivateEncrypted):
		return ChannelKind{Auth: AuthPrivate, Encrypted: true}
	case strings.HasPrefix(name, PrefixPrivateCache):
		return ChannelKind{Auth: AuthPrivate, Cache: true}
	case strings.HasPrefix(name, PrefixPrivate):
		return ChannelKind{Auth: AuthPrivate}
	case strings.HasPrefix(name, PrefixPresenceCache):
		return ChannelKind{Auth: AuthPresence, Cache: true}
	case strings.HasPrefix(name, PrefixPresence):
		return ChannelKind{Auth: AuthPresence}
	case strings.HasPrefix(name, PrefixCache):
		return ChannelKind{Cache: true}
	case strings.HasPrefix(name, "#"):
		return ChannelKind{Auth: AuthUser}
	}
	return ChannelKind{}
}

// ValidChannelName reports whether name is a channel name Pusher accepts:
// 1 to 164 characters from [A-Za-z0-9_\-=@,.;], optionally behind a
// leading '#' (reserved for server-internal channels such as
// #server-to-user-{id}).
func ValidChannelName(name string) bool {
	if len(name) == 0 || len(name) > MaxChannelNameLength {
		return false
	}
	if name[0] == '#' {
		name = name[1:]
		if name == "" {
			return false
		}
	}
	for i := 0; i < len(name); i++ {
		if !channelByte(name[i]) {
			return false
		}
	}
	return true
}

func channelByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '_', '-', '=', '@', ',', '.', ';':
		return true
	}
	return false
}
