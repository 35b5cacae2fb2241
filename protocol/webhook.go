package protocol

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
)

// Webhook event names, Pusher's (server_api/webhooks.md). Reverb sends no
// webhooks; soketi sends these same names.
const (
	WebhookChannelOccupied   = "channel_occupied"
	WebhookChannelVacated    = "channel_vacated"
	WebhookMemberAdded       = "member_added"
	WebhookMemberRemoved     = "member_removed"
	WebhookClientEvent       = "client_event"
	WebhookCacheMiss         = "cache_miss"
	WebhookSubscriptionCount = "subscription_count"
)

// WebhookNames lists every webhook event, in Pusher's order.
var WebhookNames = [...]string{
	WebhookChannelOccupied, WebhookChannelVacated,
	WebhookMemberAdded, WebhookMemberRemoved,
	WebhookClientEvent, WebhookCacheMiss, WebhookSubscriptionCount,
}

// IsWebhookName reports whether name is one of WebhookNames.
func IsWebhookName(name string) bool {
	for _, n := range WebhookNames {
		if n == name {
			return true
		}
	}
	return false
}

// WebhookEvent is one event of a webhook's body, with Pusher's fields:
//
//	{"name":"channel_occupied","channel":"c"}
//	{"name":"member_added","channel":"presence-c","user_id":"u"}
//	{"name":"client_event","channel":"c","event":"client-x","data":"…","socket_id":"1.2","user_id":"u"}
//	{"name":"subscription_count","channel":"c","subscription_count":3}
//
// Data is a string, as in every Pusher event: a client event's data that
// is a JSON string is sent as that string, any other JSON as its text.
type WebhookEvent struct {
	Name     string `json:"name"`
	Channel  string `json:"channel"`
	UserID   string `json:"user_id,omitempty"`
	Event    string `json:"event,omitempty"`
	Data     string `json:"data,omitempty"`
	SocketID string `json:"socket_id,omitempty"`
	// SubscriptionCount is set on subscription_count only (0 included).
	SubscriptionCount *int `json:"subscription_count,omitempty"`
}

// WebhookBody is the JSON a webhook POSTs: {"time_ms":…,"events":[…]}.
type WebhookBody struct {
	TimeMS int64          `json:"time_ms"`
	Events []WebhookEvent `json:"events"`
}

// AppendWebhookBody appends the body of a webhook carrying events.
func AppendWebhookBody(dst []byte, timeMS int64, events []WebhookEvent) []byte {
	b, _ := json.Marshal(WebhookBody{TimeMS: timeMS, Events: events}) // plain strings and ints: cannot fail
	return append(dst, b...)
}

// SignWebhook is X-Pusher-Signature: the hex HMAC-SHA256 of the raw body
// keyed with the app secret.
func SignWebhook(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// WebhookData turns a client event's data (raw JSON) into a webhook's
// data string.
func WebhookData(raw []byte) string {
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
	}
	return string(raw)
}
