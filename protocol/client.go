package protocol

import (
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"strings"
)

// More event names.
const (
	EventSigninSuccess     = "pusher:signin_success"
	EventWatchlistEvents   = "pusher_internal:watchlist_events"
	EventSubscriptionCount = "pusher_internal:subscription_count"
)

// MaxWatchlist is how many watched user ids Pusher accepts; the rest are
// dropped with a 4302 error.
const MaxWatchlist = 100

// CodeWatchlistLimit is sent when a watchlist is longer than MaxWatchlist.
const CodeWatchlistLimit = 4302

// AppendClientEvent appends a client event as the other subscribers
// receive it. data is relayed as the client sent it (an object from
// pusher-js, a string from some SDKs); Reverb relays it the same way.
func AppendClientEvent(dst []byte, event, channel string, data json.RawMessage, userID string) []byte {
	dst = append(dst, `{"event":`...)
	dst = AppendString(dst, event)
	dst = append(dst, `,"channel":`...)
	dst = AppendString(dst, channel)
	if len(data) > 0 {
		dst = append(dst, `,"data":`...)
		dst = append(dst, data...)
	}
	if userID != "" {
		dst = append(dst, `,"user_id":`...)
		dst = AppendString(dst, userID)
	}
	return append(dst, '}')
}

// AppendCacheMiss appends pusher:cache_miss, sent after
// subscription_succeeded on a cache channel with nothing cached.
func AppendCacheMiss(dst []byte, channel string) []byte {
	dst = append(dst, `{"event":"pusher:cache_miss","channel":`...)
	dst = AppendString(dst, channel)
	return append(dst, '}')
}

// AppendSigninSuccess appends the answer to a valid pusher:signin.
func AppendSigninSuccess(dst []byte, userData string) []byte {
	inner := make([]byte, 0, 16+len(userData))
	inner = append(inner, `{"user_data":`...)
	inner = AppendString(inner, userData)
	inner = append(inner, '}')
	dst = append(dst, `{"event":"pusher:signin_success","data":`...)
	dst = AppendString(dst, string(inner))
	return append(dst, '}')
}

// AppendWatchlistEvent appends pusher_internal:watchlist_events with one
// event ("online" or "offline") for ids.
func AppendWatchlistEvent(dst []byte, name string, ids []string) []byte {
	inner := make([]byte, 0, 48+len(ids)*8)
	inner = append(inner, `{"events":[{"name":`...)
	inner = AppendString(inner, name)
	inner = append(inner, `,"user_ids":[`...)
	for i, id := range ids {
		if i > 0 {
			inner = append(inner, ',')
		}
		inner = AppendString(inner, id)
	}
	inner = append(inner, `]}]}`...)
	dst = append(dst, `{"event":"pusher_internal:watchlist_events","data":`...)
	dst = AppendString(dst, string(inner))
	return append(dst, '}')
}

// AppendSubscriptionCount appends pusher_internal:subscription_count.
func AppendSubscriptionCount(dst []byte, channel string, n int) []byte {
	inner := strconv.AppendInt([]byte(`{"subscription_count":`), int64(n), 10)
	inner = append(inner, '}')
	dst = append(dst, `{"event":"pusher_internal:subscription_count","channel":`...)
	dst = AppendString(dst, channel)
	dst = append(dst, `,"data":`...)
	dst = AppendString(dst, string(inner))
	return append(dst, '}')
}

// SigninData is the data of pusher:signin.
type SigninData struct {
	Auth     string
	UserData string
}

// ParseSigninData decodes the data of pusher:signin.
func ParseSigninData(data json.RawMessage) (SigninData, error) {
	var raw struct {
		Auth     json.RawMessage `json:"auth"`
		UserData json.RawMessage `json:"user_data"`
	}
	data = unwrapData(data)
	if len(data) == 0 || data[0] != '{' || json.Unmarshal(data, &raw) != nil {
		return SigninData{}, ErrInvalidMessage
	}
	var d SigninData
	if !decodeString(raw.Auth, &d.Auth) || !decodeString(raw.UserData, &d.UserData) {
		return SigninData{}, ErrInvalidMessage
	}
	return d, nil
}

// ErrInvalidUserData is returned for user_data without a string id.
var ErrInvalidUserData = errors.New("user_data must be a JSON object with a non-empty string id")

// ParseUserData reads the id and watchlist of a signin's user_data.
// pusher-js requires the id to be a non-empty string, and so does Resound.
func ParseUserData(userData string) (id string, watchlist []string, err error) {
	var raw struct {
		ID        json.RawMessage `json:"id"`
		Watchlist []string        `json:"watchlist"`
	}
	if json.Unmarshal([]byte(userData), &raw) != nil || !decodeString(raw.ID, &id) || id == "" {
		return "", nil, ErrInvalidUserData
	}
	return id, raw.Watchlist, nil
}

// ServerToUserChannel is the channel a signed-in user's connections may
// subscribe to, and sendToUser triggers on.
func ServerToUserChannel(userID string) string { return PrefixServerToUser + userID }

// OriginAllowed reports whether a WebSocket's Origin header passes an
// app's allowed_origins. Patterns match the origin's host, '*' standing
// for any run of characters, as Reverb's Str::is does: "*.laravel.com"
// matches "sub.laravel.com" but not "laravel.com". No pattern, or "*",
// allows everything; a restricted list refuses a request without Origin.
func OriginAllowed(origin string, patterns []string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if p == "*" {
			return true
		}
	}
	if origin == "" {
		return false
	}
	host := origin
	if u, err := url.Parse(origin); err == nil && u.Host != "" {
		host = u.Hostname()
	}
	host = strings.ToLower(host)
	for _, p := range patterns {
		if wildcardMatch(strings.ToLower(p), host) {
			return true
		}
	}
	return false
}

// wildcardMatch matches s against p, where '*' is any run of characters.
func wildcardMatch(p, s string) bool {
	star := strings.IndexByte(p, '*')
	if star < 0 {
		return p == s
	}
	if !strings.HasPrefix(s, p[:star]) {
		return false
	}
	s, p = s[star:], p[star+1:]
	// Let the star take 0, 1, 2... characters and match the rest.
	for i := 0; i <= len(s); i++ {
		if wildcardMatch(p, s[i:]) {
			return true
		}
	}
	return false
}
