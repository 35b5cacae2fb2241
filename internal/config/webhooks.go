package config

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/resoundhq/resound/protocol"
)

// Webhook is one receiver of an app's webhooks, in soketi's shape, so that
// a soketi apps file brings its webhooks unchanged:
//
//	{"url": "https://app.test/pusher/webhook",
//	 "event_types": ["channel_occupied", "channel_vacated"],
//	 "headers": {"X-Team": "blue"},
//	 "filter": {"channel_name_starts_with": "private-", "channel_name_ends_with": ""}}
//
// Pusher's dashboard has the same choices: a URL and which events go to it.
type Webhook struct {
	URL        string            `json:"url"`
	EventTypes []string          `json:"event_types"`
	Headers    map[string]string `json:"headers,omitempty"`
	Filter     WebhookFilter     `json:"filter,omitzero"`
}

// WebhookFilter narrows a webhook to channels by name; empty matches all.
type WebhookFilter struct {
	ChannelNameStartsWith string `json:"channel_name_starts_with,omitempty"`
	ChannelNameEndsWith   string `json:"channel_name_ends_with,omitempty"`
}

// Wants reports whether the webhook takes an event of this name on this
// channel.
func (w *Webhook) Wants(name, channel string) bool {
	if !strings.HasPrefix(channel, w.Filter.ChannelNameStartsWith) || !strings.HasSuffix(channel, w.Filter.ChannelNameEndsWith) {
		return false
	}
	for _, t := range w.EventTypes {
		if t == name {
			return true
		}
	}
	return false
}

// WantsWebhook reports whether any of the app's webhooks takes an event of
// this name on this channel: the gateway records nothing otherwise.
func (a *App) WantsWebhook(name, channel string) bool {
	for i := range a.Webhooks {
		if a.Webhooks[i].Wants(name, channel) {
			return true
		}
	}
	return false
}

// WantsWebhookOf reports whether any of the app's webhooks takes events of
// this name on some channel: the gateway keeps cluster-wide channel
// occupancy only for apps that want channel_occupied or channel_vacated.
func (a *App) WantsWebhookOf(name string) bool {
	for i := range a.Webhooks {
		for _, t := range a.Webhooks[i].EventTypes {
			if t == name {
				return true
			}
		}
	}
	return false
}

// The headers a webhook's own headers may not replace: they carry the
// signature and what it signs.
var reservedWebhookHeaders = map[string]bool{
	"X-Pusher-Key": true, "X-Pusher-Signature": true, "Content-Type": true, "Content-Length": true, "Host": true,
}

func (w *Webhook) validate() error {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("webhook url %q: must be an absolute http:// or https:// URL", w.URL)
	}
	if len(w.EventTypes) == 0 {
		return fmt.Errorf("webhook %s: event_types must name at least one of %s", w.URL, strings.Join(protocol.WebhookNames[:], ", "))
	}
	for _, t := range w.EventTypes {
		if !protocol.IsWebhookName(t) {
			return fmt.Errorf("webhook %s: unknown event type %q (one of %s)", w.URL, t, strings.Join(protocol.WebhookNames[:], ", "))
		}
	}
	for k, v := range w.Headers {
		if reservedWebhookHeaders[http.CanonicalHeaderKey(k)] {
			return fmt.Errorf("webhook %s: header %s is set by Resound", w.URL, k)
		}
		if k == "" || strings.ContainsAny(k, " :\r\n") || strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("webhook %s: header %q is not a valid header", w.URL, k)
		}
	}
	return nil
}

// environmentWebhooks is the environment app's webhook, from
// RESOUND_WEBHOOK_URL and RESOUND_WEBHOOK_EVENTS.
func (s *Settings) environmentWebhooks() ([]Webhook, error) {
	if s.WebhookURL == "" {
		return nil, nil
	}
	var types []string
	for _, t := range strings.Split(s.WebhookEvents, ",") {
		if t = strings.TrimSpace(t); t != "" {
			types = append(types, t)
		}
	}
	w := Webhook{URL: s.WebhookURL, EventTypes: types}
	if err := w.validate(); err != nil {
		return nil, fmt.Errorf("invalid settings RESOUND_WEBHOOK_URL and RESOUND_WEBHOOK_EVENTS: %w", err)
	}
	return []Webhook{w}, nil
}
