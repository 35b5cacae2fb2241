package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// App is one tenant: its credentials and the limits its clients get.
// Zero limits mean "use the process-wide setting".
type App struct {
	ID              string  `json:"app_id"`
	Key             string  `json:"key"`
	Secret          string  `json:"secret"`
	PingInterval    Seconds `json:"ping_interval,omitempty"`
	ActivityTimeout Seconds `json:"activity_timeout,omitempty"`
	MaxMessageSize  int     `json:"max_message_size,omitempty"`

	// AllowedOrigins are host patterns ("*.example.com"); a WebSocket whose
	// Origin host matches none is refused with 4009. Unset means any.
	AllowedOrigins []string `json:"allowed_origins,omitempty"`
	// MaxConnections caps the app's connections across the cluster; 0 is
	// no cap. Over it, a connection gets 4004.
	MaxConnections int `json:"max_connections,omitempty"`
	// AcceptClientEventsFrom is "members" (the default: only connections
	// subscribed to the channel), "all", or "none", as in Reverb.
	AcceptClientEventsFrom string `json:"accept_client_events_from,omitempty"`
	// ClientEventRateLimit is client events per second per connection
	// (Pusher's 10 by default).
	ClientEventRateLimit int `json:"client_event_rate_limit,omitempty"`
	// Presence limits, Pusher's by default: 100 members, 1 KB of
	// user_info, 128-byte user ids.
	MaxPresenceMembers      int `json:"max_presence_members,omitempty"`
	MaxPresenceUserInfo     int `json:"max_presence_user_info,omitempty"`
	MaxPresenceUserIDLength int `json:"max_presence_user_id_length,omitempty"`
	// MaxUserConnections bounds the connections one user may have on one
	// presence channel, and signed in at once, so that one user's sockets
	// cannot grow a shared key without end. Pusher has no such limit; 100
	// is more tabs than anyone opens.
	MaxUserConnections int `json:"max_user_connections,omitempty"`
	// SubscriptionCount turns on pusher_internal:subscription_count events
	// for non-presence channels, as Pusher's app setting does.
	SubscriptionCount bool `json:"subscription_count,omitempty"`
	// Recovery lets clients resume channels where they left off: events
	// carry their position, and a resubscription that gives one gets what
	// it missed (docs/recovery.md). Unset takes RESOUND_RECOVERY.
	Recovery *bool `json:"recovery,omitempty"`
	// Webhooks are where the app's webhooks go (config/webhooks.go).
	Webhooks []Webhook `json:"webhooks,omitempty"`
}

// Client-event modes.
const (
	ClientEventsMembers = "members"
	ClientEventsAll     = "all"
	ClientEventsNone    = "none"
)

// Apps is the set of configured apps, found by id (HTTP API) or by key
// (WebSocket). It is read-only once built.
type Apps struct {
	list  []*App
	byID  map[string]*App
	byKey map[string]*App
}

// NewApps checks the apps (ids and keys unique, credentials present) and
// indexes them.
func NewApps(apps []App) (*Apps, error) {
	a := &Apps{byID: make(map[string]*App), byKey: make(map[string]*App)}
	for i := range apps {
		app := apps[i]
		switch {
		case app.ID == "":
			return nil, fmt.Errorf("app #%d: app_id is required", i+1)
		case app.Key == "":
			return nil, fmt.Errorf("app %q: key is required", app.ID)
		case app.Secret == "":
			return nil, fmt.Errorf("app %q: secret is required", app.ID)
		case app.MaxMessageSize < 0:
			return nil, fmt.Errorf("app %q: max_message_size must not be negative", app.ID)
		case app.ActivityTimeout != 0 && app.ActivityTimeout < Seconds(time.Second):
			return nil, fmt.Errorf("app %q: activity_timeout must be at least 1 second", app.ID)
		case app.MaxConnections < 0:
			return nil, fmt.Errorf("app %q: max_connections must not be negative", app.ID)
		case app.ClientEventRateLimit < 0 || app.MaxPresenceMembers < 0 || app.MaxPresenceUserInfo < 0 || app.MaxPresenceUserIDLength < 0 || app.MaxUserConnections < 0:
			return nil, fmt.Errorf("app %q: limits must not be negative", app.ID)
		}
		switch app.AcceptClientEventsFrom {
		case "", ClientEventsMembers, ClientEventsAll, ClientEventsNone:
		default:
			return nil, fmt.Errorf("app %q: accept_client_events_from must be members, all or none", app.ID)
		}
		for j := range app.Webhooks {
			if err := app.Webhooks[j].validate(); err != nil {
				return nil, fmt.Errorf("app %q: %w", app.ID, err)
			}
		}
		if _, dup := a.byID[app.ID]; dup {
			return nil, fmt.Errorf("app %q: app_id is used twice", app.ID)
		}
		if _, dup := a.byKey[app.Key]; dup {
			return nil, fmt.Errorf("app %q: key is used by another app", app.ID)
		}
		a.list = append(a.list, &app)
		a.byID[app.ID] = &app
		a.byKey[app.Key] = &app
	}
	return a, nil
}

// ByID finds an app by its id.
func (a *Apps) ByID(id string) (*App, bool) { app, ok := a.byID[id]; return app, ok }

// ByKey finds an app by its key.
func (a *Apps) ByKey(key string) (*App, bool) { app, ok := a.byKey[key]; return app, ok }

// Recovers reports whether the app lets clients resume channels.
func (a *App) Recovers() bool { return a.Recovery != nil && *a.Recovery }

// ByKeyBytes is ByKey for a key still in a request's bytes; it does not
// copy them.
func (a *Apps) ByKeyBytes(key []byte) (*App, bool) { app, ok := a.byKey[string(key)]; return app, ok }

// All lists the apps in configuration order.
func (a *Apps) All() []*App { return a.list }

// Len is the number of apps.
func (a *Apps) Len() int { return len(a.list) }

// withDefaults returns app with every unset limit filled in from s, or
// from Pusher's defaults.
func (s *Settings) withDefaults(app App) App {
	if app.PingInterval == 0 {
		app.PingInterval = s.PingInterval
	}
	if app.ActivityTimeout == 0 {
		app.ActivityTimeout = s.ActivityTimeout
	}
	if app.MaxMessageSize == 0 {
		app.MaxMessageSize = s.MaxMessageSize
	}
	if app.AcceptClientEventsFrom == "" {
		app.AcceptClientEventsFrom = ClientEventsMembers
	}
	if app.ClientEventRateLimit == 0 {
		app.ClientEventRateLimit = 10
	}
	if app.MaxPresenceMembers == 0 {
		app.MaxPresenceMembers = 100
	}
	if app.MaxPresenceUserInfo == 0 {
		app.MaxPresenceUserInfo = 1024
	}
	if app.MaxPresenceUserIDLength == 0 {
		app.MaxPresenceUserIDLength = 128
	}
	if app.MaxUserConnections == 0 {
		app.MaxUserConnections = 100
	}
	if app.Recovery == nil {
		on := s.Recovery
		app.Recovery = &on
	}
	return app
}

// appsFile is the apps file: {"apps":[...]} like the apps array of
// Reverb's config/reverb.php, or a bare array.
type appsFile struct {
	Apps []App `json:"apps"`
}

func (s *Settings) loadApps() (*Apps, error) {
	var apps []App
	if s.AppID != "" || s.AppKey != "" || s.AppSecret != "" {
		if s.AppID == "" || s.AppKey == "" || s.AppSecret == "" {
			return nil, fmt.Errorf("invalid settings: REVERB_APP_ID, REVERB_APP_KEY and REVERB_APP_SECRET must be set together")
		}
		if s.AppMaxMessageSize < 0 {
			return nil, fmt.Errorf("invalid setting REVERB_APP_MAX_MESSAGE_SIZE=%d: must not be negative", s.AppMaxMessageSize)
		}
		if s.AppActivityTimeout != 0 && s.AppActivityTimeout < Seconds(time.Second) {
			return nil, fmt.Errorf("invalid setting REVERB_APP_ACTIVITY_TIMEOUT: must be at least 1 second")
		}
		hooks, err := s.environmentWebhooks()
		if err != nil {
			return nil, err
		}
		apps = append(apps, App{
			Webhooks: hooks,
			ID:       s.AppID, Key: s.AppKey, Secret: s.AppSecret,
			PingInterval: s.AppPingInterval, ActivityTimeout: s.AppActivityTimeout, MaxMessageSize: s.AppMaxMessageSize,
			MaxConnections: s.AppMaxConnections, AcceptClientEventsFrom: s.AppAcceptClientEventsFrom,
		})
	}
	if s.AppsFile != "" {
		fromFile, err := readAppsFile(s.AppsFile)
		if err != nil {
			return nil, fmt.Errorf("invalid setting RESOUND_APPS_FILE=%q: %w", s.AppsFile, err)
		}
		apps = append(apps, fromFile...)
	}
	for i := range apps {
		apps[i] = s.withDefaults(apps[i])
	}
	return NewApps(apps)
}

func readAppsFile(path string) ([]App, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// JSON's own whitespace only: bytes.TrimSpace would also drop a
	// vertical tab or form feed, which JSON does not allow (found by
	// FuzzAppsFile).
	raw = bytes.Trim(raw, " \t\r\n")
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var apps []App
	if len(raw) > 0 && raw[0] == '[' {
		if err := dec.Decode(&apps); err != nil {
			return nil, err
		}
	} else {
		var f appsFile
		if err := dec.Decode(&f); err != nil {
			return nil, err
		}
		apps = f.Apps
	}
	// Decode reads one JSON value; without this check a second object
	// (two files concatenated, a bad merge) would be silently ignored.
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the apps")
	}
	return apps, nil
}

// WithApp returns a copy of c whose apps are exactly app, with the process
// defaults filled in. The all-in-one gateway uses it for its development
// app.
func (c *Config) WithApp(app App) (*Config, error) {
	apps, err := NewApps([]App{c.withDefaults(app)})
	if err != nil {
		return nil, err
	}
	out := *c
	out.Apps = apps
	return &out, nil
}
