package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzAppsFile loads arbitrary bytes as RESOUND_APPS_FILE, next to an app
// from the environment. Loading must not panic; a file that loads must be
// one JSON document, and every app it gives must have its defaults filled
// in and pass NewApps's rules again. The corpus holds files shaped like
// Reverb's config/reverb.php apps array and the README's example.
func FuzzAppsFile(f *testing.F) {
	f.Add([]byte(`{"apps":[{"app_id":"1","key":"k","secret":"s","ping_interval":"1m","allowed_origins":["*.example.com"]}]}`), false)
	f.Add([]byte(`[{"app_id":"1","key":"k","secret":"s","max_message_size":99,"activity_timeout":10}]`), true)
	// One file per fuzzing process, which calls the target sequentially.
	path := filepath.Join(f.TempDir(), "apps.json")
	f.Fuzz(func(t *testing.T, content []byte, withEnvApp bool) {
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		s := Settings{
			AppsFile:        path,
			PingInterval:    Seconds(60 * time.Second),
			ActivityTimeout: Seconds(30 * time.Second),
			MaxMessageSize:  10000,
		}
		if withEnvApp {
			s.AppID, s.AppKey, s.AppSecret = "env", "env-key", "env-secret"
		}
		apps, err := s.loadApps()
		if err != nil {
			return
		}
		if !json.Valid(content) {
			t.Fatalf("loaded %q, which is not one JSON document", content)
		}
		list := make([]App, 0, apps.Len())
		for _, app := range apps.All() {
			checkDefaults(t, app)
			if byID, _ := apps.ByID(app.ID); byID != app {
				t.Fatalf("ByID(%q) is another app", app.ID)
			}
			if byKey, _ := apps.ByKey(app.Key); byKey != app {
				t.Fatalf("ByKey(%q) is another app", app.Key)
			}
			list = append(list, *app)
		}
		if _, err := NewApps(list); err != nil {
			t.Fatalf("loaded apps fail NewApps: %v", err)
		}
	})
}

func checkDefaults(t *testing.T, app *App) {
	t.Helper()
	switch {
	case app.ID == "" || app.Key == "" || app.Secret == "":
		t.Fatalf("app %+v lacks credentials", app)
	case app.PingInterval <= 0, app.ActivityTimeout < Seconds(time.Second), app.MaxMessageSize <= 0:
		t.Fatalf("app %q: ping %v, activity timeout %v, max message %d", app.ID,
			app.PingInterval.Duration(), app.ActivityTimeout.Duration(), app.MaxMessageSize)
	case app.ClientEventRateLimit <= 0, app.MaxPresenceMembers <= 0, app.MaxPresenceUserInfo <= 0,
		app.MaxPresenceUserIDLength <= 0, app.MaxUserConnections <= 0, app.MaxConnections < 0:
		t.Fatalf("app %q: a limit is unset or negative: %+v", app.ID, app)
	}
	switch app.AcceptClientEventsFrom {
	case ClientEventsMembers, ClientEventsAll, ClientEventsNone:
	default:
		t.Fatalf("app %q: accept_client_events_from %q", app.ID, app.AcceptClientEventsFrom)
	}
}
