package config

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// settingNames are every variable Settings reads, taken from its tags so
// that a new setting is covered without editing this list.
func settingNames(t *testing.T) []string {
	t.Helper()
	var buf bytes.Buffer
	if err := Usage(&buf); err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`(?m)^  ([A-Z_]+)`).FindAllStringSubmatch(buf.String(), -1)
	if len(names) == 0 {
		t.Fatalf("Usage listed no variables:\n%s", buf.String())
	}
	out := make([]string, len(names))
	for i, m := range names {
		out[i] = m[1]
	}
	return out
}

// cleanEnv unsets every setting for the duration of the test (t.Setenv
// restores them afterwards), so that the caller's environment cannot leak
// in. envconfig treats a variable set to "" as set, hence the Unsetenv.
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, k := range settingNames(t) {
		t.Setenv(k, "")
		if err := os.Unsetenv(k); err != nil {
			t.Fatal(err)
		}
	}
}

func setEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func mustLoad(t *testing.T) *Config {
	t.Helper()
	c, err := Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "apps.json")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadDefaults(t *testing.T) {
	cleanEnv(t)
	c := mustLoad(t)
	checks := []struct {
		name      string
		got, want any
	}{
		{"Port", c.Port, 8080},
		{"Host", c.Host, "0.0.0.0"},
		{"Path", c.Path, ""},
		{"PingInterval", c.PingInterval.Duration(), 60 * time.Second},
		{"ActivityTimeout", c.ActivityTimeout.Duration(), 30 * time.Second},
		{"PongTimeout", c.PongTimeout.Duration(), 30 * time.Second},
		{"MaxMessageSize", c.MaxMessageSize, 10000},
		{"MaxEventSize", c.MaxEventSize, 10240},
		{"MaxRequestSize", c.MaxRequestSize, 262144},
		{"Workers", c.Workers, 4},
		{"LogLevel", c.LogLevel, "info"},
		{"LogFormat", c.LogFormat, "auto"},
		{"QueueMaxAge", c.QueueMaxAge.Duration(), 24 * time.Hour},
		{"QueueMaxBytes", c.QueueMaxBytes, int64(1 << 30)},
		{"NATSURL", c.NATSURL, ""},
		{"apps", c.Apps.Len(), 0},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestLoadOneAppFromEnvironment(t *testing.T) {
	cleanEnv(t)
	setEnv(t, map[string]string{
		"REVERB_APP_ID": "123456", "REVERB_APP_KEY": "the-key", "REVERB_APP_SECRET": "the-secret",
		"REVERB_APP_PING_INTERVAL": "15", "REVERB_APP_MAX_MESSAGE_SIZE": "500",
	})
	c := mustLoad(t)
	if c.Apps.Len() != 1 {
		t.Fatalf("%d apps, want 1", c.Apps.Len())
	}
	byID, ok := c.Apps.ByID("123456")
	if !ok {
		t.Fatal("ByID did not find the app")
	}
	byKey, ok := c.Apps.ByKey("the-key")
	if !ok || byKey != byID {
		t.Fatal("ByKey did not find the same app")
	}
	want := App{ID: "123456", Key: "the-key", Secret: "the-secret",
		PingInterval: Seconds(15 * time.Second), ActivityTimeout: Seconds(30 * time.Second), MaxMessageSize: 500,
		AcceptClientEventsFrom: ClientEventsMembers, ClientEventRateLimit: 10,
		MaxPresenceMembers: 100, MaxPresenceUserInfo: 1024, MaxPresenceUserIDLength: 128, MaxUserConnections: 100,
		Recovery: new(bool)}
	if !reflect.DeepEqual(*byID, want) {
		t.Fatalf("app = %+v, want %+v", *byID, want)
	}
	if _, ok := c.Apps.ByID("the-key"); ok {
		t.Fatal("ByID found the app by its key")
	}
}

func TestLoadPartialAppIsAnError(t *testing.T) {
	for _, env := range []map[string]string{
		{"REVERB_APP_ID": "1"},
		{"REVERB_APP_KEY": "k"},
		{"REVERB_APP_SECRET": "s"},
		{"REVERB_APP_ID": "1", "REVERB_APP_KEY": "k"},
		{"REVERB_APP_ID": "1", "REVERB_APP_SECRET": "s"},
		{"REVERB_APP_KEY": "k", "REVERB_APP_SECRET": "s"},
	} {
		t.Run(strings.Join(keys(env), "+"), func(t *testing.T) {
			cleanEnv(t)
			setEnv(t, env)
			_, err := Load()
			if err == nil || !strings.Contains(err.Error(), "REVERB_APP_ID") {
				t.Fatalf("Load = %v, want an error naming REVERB_APP_ID/KEY/SECRET", err)
			}
		})
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestSecondsParse(t *testing.T) {
	cases := []struct {
		value string
		want  time.Duration
	}{
		{"60", 60 * time.Second},
		{"1m", time.Minute},
		{"1m30s", 90 * time.Second},
		{"500ms", 500 * time.Millisecond},
		{"1.5", 1500 * time.Millisecond},
		{" 45 ", 45 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.value, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv("RESOUND_PING_INTERVAL", tc.value)
			if tc.want >= time.Second {
				t.Setenv("RESOUND_QUEUE_MAX_AGE", tc.value)
			}
			c := mustLoad(t)
			if c.PingInterval.Duration() != tc.want {
				t.Fatalf("RESOUND_PING_INTERVAL=%q gave %v, want %v", tc.value, c.PingInterval.Duration(), tc.want)
			}
			if tc.want >= time.Second && c.QueueMaxAge.Duration() != tc.want {
				t.Fatalf("RESOUND_QUEUE_MAX_AGE=%q gave %v, want %v", tc.value, c.QueueMaxAge.Duration(), tc.want)
			}
		})
	}
	// The apps file takes numbers and strings too.
	var a App
	if err := json.Unmarshal([]byte(`{"app_id":"1","key":"k","secret":"s","ping_interval":90,"activity_timeout":"2m"}`), &a); err != nil {
		t.Fatal(err)
	}
	if a.PingInterval.Duration() != 90*time.Second || a.ActivityTimeout.Duration() != 2*time.Minute {
		t.Fatalf("decoded %+v", a)
	}
}

func TestInvalidSettingsNameTheVariable(t *testing.T) {
	cases := []struct {
		env     map[string]string
		mention string
	}{
		{map[string]string{"REVERB_SERVER_PORT": "abc"}, "REVERB_SERVER_PORT"},
		{map[string]string{"REVERB_SERVER_PORT": "70000"}, "REVERB_SERVER_PORT"},
		{map[string]string{"REVERB_SERVER_PORT": "-1"}, "REVERB_SERVER_PORT"},
		{map[string]string{"REVERB_SERVER_PATH": "/re verb"}, "REVERB_SERVER_PATH"},
		{map[string]string{"REVERB_SERVER_PATH": "/reverb?x=1"}, "REVERB_SERVER_PATH"},
		{map[string]string{"REVERB_SERVER_PATH": "/a//b"}, "REVERB_SERVER_PATH"},
		{map[string]string{"RESOUND_WORKERS": "0"}, "RESOUND_WORKERS"},
		{map[string]string{"RESOUND_WORKERS": "many"}, "RESOUND_WORKERS"},
		{map[string]string{"RESOUND_LOG_LEVEL": "loud"}, "RESOUND_LOG_LEVEL"},
		{map[string]string{"RESOUND_LOG_FORMAT": "xml"}, "RESOUND_LOG_FORMAT"},
		{map[string]string{"RESOUND_ACTIVITY_TIMEOUT": "0"}, "RESOUND_ACTIVITY_TIMEOUT"},
		{map[string]string{"RESOUND_ACTIVITY_TIMEOUT": "500ms"}, "RESOUND_ACTIVITY_TIMEOUT"},
		{map[string]string{"RESOUND_PING_INTERVAL": "0"}, "RESOUND_PING_INTERVAL"},
		{map[string]string{"RESOUND_PING_INTERVAL": "-5"}, "RESOUND_PING_INTERVAL"},
		{map[string]string{"RESOUND_PING_INTERVAL": "soon"}, "RESOUND_PING_INTERVAL"},
		{map[string]string{"RESOUND_PONG_TIMEOUT": "0"}, "RESOUND_PONG_TIMEOUT"},
		{map[string]string{"RESOUND_MAX_MESSAGE_SIZE": "0"}, "RESOUND_MAX_MESSAGE_SIZE"},
		{map[string]string{"RESOUND_MAX_EVENT_SIZE": "0"}, "RESOUND_MAX_EVENT_SIZE"},
		{map[string]string{"RESOUND_MAX_EVENT_SIZE": "20000", "RESOUND_MAX_REQUEST_SIZE": "19999"}, "RESOUND_MAX_REQUEST_SIZE"},
		{map[string]string{"RESOUND_MAX_REQUEST_SIZE": "100"}, "RESOUND_MAX_REQUEST_SIZE"},
		{map[string]string{"RESOUND_QUEUE_MAX_BYTES": "1000"}, "RESOUND_QUEUE_MAX_BYTES"},
		{map[string]string{"RESOUND_QUEUE_MAX_AGE": "0"}, "RESOUND_QUEUE_MAX_AGE"},
		{map[string]string{"REVERB_APP_ID": "1", "REVERB_APP_KEY": "k", "REVERB_APP_SECRET": "s", "REVERB_APP_MAX_MESSAGE_SIZE": "-1"}, "REVERB_APP_MAX_MESSAGE_SIZE"},
		{map[string]string{"REVERB_APP_ID": "1", "REVERB_APP_KEY": "k", "REVERB_APP_SECRET": "s", "REVERB_APP_ACTIVITY_TIMEOUT": "100ms"}, "REVERB_APP_ACTIVITY_TIMEOUT"},
		{map[string]string{"REVERB_APP_PING_INTERVAL": "-1"}, "REVERB_APP_PING_INTERVAL"},
		{map[string]string{"RESOUND_APPS_FILE": "/nonexistent/apps.json"}, "RESOUND_APPS_FILE"},
		{map[string]string{"RESOUND_TLS_CERT": "/etc/cert.pem"}, "RESOUND_TLS_KEY"},
		{map[string]string{"RESOUND_TLS_KEY": "/etc/key.pem"}, "RESOUND_TLS_CERT"},
	}
	for _, tc := range cases {
		var name []string
		for k, v := range tc.env {
			name = append(name, k+"="+v)
		}
		t.Run(strings.Join(name, ","), func(t *testing.T) {
			cleanEnv(t)
			setEnv(t, tc.env)
			c, err := Load()
			if err == nil {
				t.Fatalf("Load accepted it: %+v", c.Settings)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("error %q does not name %s", err, tc.mention)
			}
		})
	}
}

// TestServerPathIsNormalizedAsReverbDoes: Reverb passes REVERB_SERVER_PATH
// to Symfony's RouteCollection::addPrefix, which trims slashes, so a .env
// with "/reverb/" (issue 12) or "reverb" starts Reverb and must start Resound.
func TestServerPathIsNormalizedAsReverbDoes(t *testing.T) {
	for in, want := range map[string]string{
		"/reverb":      "/reverb",
		"/reverb/":     "/reverb",
		"reverb":       "/reverb",
		"reverb/":      "/reverb",
		" /reverb/ ":   "/reverb",
		"/ws/reverb/":  "/ws/reverb",
		"/":            "",
		"//":           "",
		"/reverb/////": "/reverb",
	} {
		t.Run(in, func(t *testing.T) {
			cleanEnv(t)
			setEnv(t, map[string]string{"REVERB_SERVER_PATH": in})
			if got := mustLoad(t).Path; got != want {
				t.Fatalf("REVERB_SERVER_PATH=%q gives the prefix %q, want %q", in, got, want)
			}
		})
	}
}

func TestAppsFile(t *testing.T) {
	const two = `[
		{"app_id": "a1", "key": "ka1", "secret": "sa1"},
		{"app_id": "a2", "key": "ka2", "secret": "sa2", "ping_interval": 5, "activity_timeout": "10s", "max_message_size": 99}
	]`
	cases := []struct {
		name    string
		content string
		env     bool // also define REVERB_APP_*
		ids     []string
	}{
		{"object", `{"apps":` + two + `}`, false, []string{"a1", "a2"}},
		{"bare array", two, false, []string{"a1", "a2"}},
		{"bare array with leading space", "\n  " + two + "\n", false, []string{"a1", "a2"}},
		{"object and environment", `{"apps":` + two + `}`, true, []string{"env", "a1", "a2"}},
		{"array and environment", two, true, []string{"env", "a1", "a2"}},
		{"empty list", `{"apps":[]}`, false, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv("RESOUND_APPS_FILE", writeFile(t, tc.content))
			if tc.env {
				setEnv(t, map[string]string{"REVERB_APP_ID": "env", "REVERB_APP_KEY": "kenv", "REVERB_APP_SECRET": "senv"})
			}
			c := mustLoad(t)
			var ids []string
			for _, a := range c.Apps.All() {
				ids = append(ids, a.ID)
			}
			if strings.Join(ids, ",") != strings.Join(tc.ids, ",") {
				t.Fatalf("apps %v, want %v", ids, tc.ids)
			}
			for _, id := range tc.ids {
				app, _ := c.Apps.ByID(id)
				if byKey, ok := c.Apps.ByKey(app.Key); !ok || byKey != app {
					t.Fatalf("ByKey(%q) did not find app %q", app.Key, id)
				}
			}
		})
	}
}

func TestAppLimitsFallBackToProcessSettings(t *testing.T) {
	cleanEnv(t)
	setEnv(t, map[string]string{
		"RESOUND_PING_INTERVAL": "120", "RESOUND_ACTIVITY_TIMEOUT": "45", "RESOUND_MAX_MESSAGE_SIZE": "2048",
		"REVERB_APP_ID": "env", "REVERB_APP_KEY": "kenv", "REVERB_APP_SECRET": "senv",
		"RESOUND_APPS_FILE": writeFile(t, `{"apps":[
			{"app_id": "plain", "key": "k1", "secret": "s1"},
			{"app_id": "own", "key": "k2", "secret": "s2", "ping_interval": 5, "activity_timeout": "10s", "max_message_size": 99}
		]}`),
	})
	c := mustLoad(t)
	process := App{PingInterval: Seconds(120 * time.Second), ActivityTimeout: Seconds(45 * time.Second), MaxMessageSize: 2048}
	own := App{PingInterval: Seconds(5 * time.Second), ActivityTimeout: Seconds(10 * time.Second), MaxMessageSize: 99}
	for id, want := range map[string]App{"env": process, "plain": process, "own": own} {
		app, ok := c.Apps.ByID(id)
		if !ok {
			t.Fatalf("no app %q", id)
		}
		if app.PingInterval != want.PingInterval || app.ActivityTimeout != want.ActivityTimeout || app.MaxMessageSize != want.MaxMessageSize {
			t.Errorf("app %q limits = %v %v %d, want %v %v %d", id,
				app.PingInterval.Duration(), app.ActivityTimeout.Duration(), app.MaxMessageSize,
				want.PingInterval.Duration(), want.ActivityTimeout.Duration(), want.MaxMessageSize)
		}
	}
}

func TestAppsFileErrors(t *testing.T) {
	env := map[string]string{"REVERB_APP_ID": "env", "REVERB_APP_KEY": "kenv", "REVERB_APP_SECRET": "senv"}
	cases := []struct {
		name    string
		content string
		env     map[string]string
		mention string
	}{
		{"unknown field in object", `{"apps":[{"app_id":"1","key":"k","secret":"s","allowed_origin":["*"]}]}`, nil, "allowed_origin"},
		{"unknown top-level field", `{"apps":[],"provider":"config"}`, nil, "provider"},
		{"unknown field in array", `[{"app_id":"1","key":"k","secret":"s","max_connection":5}]`, nil, "max_connection"},
		{"not JSON", `apps: []`, nil, "RESOUND_APPS_FILE"},
		{"empty file", ``, nil, "RESOUND_APPS_FILE"},
		{"duplicate app_id in file", `[{"app_id":"1","key":"k1","secret":"s"},{"app_id":"1","key":"k2","secret":"s"}]`, nil, `"1"`},
		{"duplicate key in file", `[{"app_id":"1","key":"k","secret":"s"},{"app_id":"2","key":"k","secret":"s"}]`, nil, `"2"`},
		{"app_id shared with environment", `[{"app_id":"env","key":"other","secret":"s"}]`, env, "app_id"},
		{"key shared with environment", `[{"app_id":"other","key":"kenv","secret":"s"}]`, env, "key"},
		{"missing app_id", `[{"key":"k","secret":"s"}]`, nil, "app_id"},
		{"missing key", `[{"app_id":"1","secret":"s"}]`, nil, "key"},
		{"missing secret", `[{"app_id":"1","key":"k"}]`, nil, "secret"},
		{"negative max_message_size", `[{"app_id":"1","key":"k","secret":"s","max_message_size":-1}]`, nil, "max_message_size"},
		{"activity_timeout under a second", `[{"app_id":"1","key":"k","secret":"s","activity_timeout":"10ms"}]`, nil, "activity_timeout"},
		{"bad duration", `[{"app_id":"1","key":"k","secret":"s","ping_interval":"later"}]`, nil, "later"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			setEnv(t, tc.env)
			t.Setenv("RESOUND_APPS_FILE", writeFile(t, tc.content))
			c, err := Load()
			if err == nil {
				t.Fatalf("Load accepted it with %d apps", c.Apps.Len())
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("error %q does not mention %s", err, tc.mention)
			}
		})
	}
}

func TestNewAppsDuplicates(t *testing.T) {
	cases := []struct {
		name string
		apps []App
		want string
	}{
		{"duplicate id", []App{{ID: "1", Key: "a", Secret: "s"}, {ID: "1", Key: "b", Secret: "s"}}, "app_id is used twice"},
		{"duplicate key", []App{{ID: "1", Key: "a", Secret: "s"}, {ID: "2", Key: "a", Secret: "s"}}, "key is used by another app"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewApps(tc.apps); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewApps = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestWithAppFillsDefaults(t *testing.T) {
	cleanEnv(t)
	t.Setenv("RESOUND_MAX_MESSAGE_SIZE", "777")
	c := mustLoad(t)
	d, err := c.WithApp(App{ID: "dev", Key: "dk", Secret: "ds"})
	if err != nil {
		t.Fatal(err)
	}
	app, ok := d.Apps.ByKey("dk")
	if !ok || app.MaxMessageSize != 777 || app.PingInterval.Duration() != time.Minute || app.ActivityTimeout.Duration() != 30*time.Second {
		t.Fatalf("WithApp gave %+v", app)
	}
	if c.Apps.Len() != 0 {
		t.Fatal("WithApp changed the original config")
	}
}

func TestResolvedDataDir(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	wd, err := os.Getwd() // dir may sit behind a symlink
	if err != nil {
		t.Fatal(err)
	}
	cleanEnv(t)
	t.Setenv("REVERB_SERVER_PORT", "9123")
	c := mustLoad(t)
	got, err := c.ResolvedDataDir()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(wd, ".resound", "9123"); got != want {
		t.Fatalf("ResolvedDataDir = %q, want %q", got, want)
	}

	t.Setenv("RESOUND_DATA_DIR", "relative/store")
	c = mustLoad(t)
	got, err = c.ResolvedDataDir()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(wd, "relative", "store"); got != want {
		t.Fatalf("ResolvedDataDir with RESOUND_DATA_DIR = %q, want %q", got, want)
	}
}

func TestDevApp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "yet", "made")
	app, created, err := DevApp(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("first call did not report creating the app")
	}
	if !regexp.MustCompile(`^[1-9][0-9]{5}$`).MatchString(app.ID) {
		t.Errorf("id %q is not six digits", app.ID)
	}
	lower20 := regexp.MustCompile(`^[a-z]{20}$`)
	if !lower20.MatchString(app.Key) || !lower20.MatchString(app.Secret) {
		t.Errorf("key %q / secret %q are not 20 lowercase letters", app.Key, app.Secret)
	}
	if app.Key == app.Secret {
		t.Error("key and secret are equal")
	}
	again, created, err := DevApp(dir)
	if err != nil {
		t.Fatal(err)
	}
	if created || !reflect.DeepEqual(again, app) {
		t.Fatalf("second call gave %+v (created %v), want %+v", again, created, app)
	}
	if info, err := os.Stat(filepath.Join(dir, "dev-app.json")); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("dev-app.json: %v %v, want mode 0600", info, err)
	}
	// Another directory is another app.
	other, _, err := DevApp(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if other.Key == app.Key {
		t.Fatal("two data directories share a key")
	}
}

func TestDevAppCorruptFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dev-app.json"), []byte("{nope"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := DevApp(dir); err == nil || !strings.Contains(err.Error(), "dev-app.json") {
		t.Fatalf("DevApp = %v, want an error naming the file", err)
	}
}

func TestUsageListsEverySetting(t *testing.T) {
	var buf bytes.Buffer
	if err := Usage(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, name := range []string{
		"REVERB_APP_ID", "REVERB_APP_KEY", "REVERB_APP_SECRET", "REVERB_SERVER_HOST", "REVERB_SERVER_PORT",
		"REVERB_SERVER_PATH", "NATS_URL", "RESOUND_APPS_FILE", "RESOUND_DATA_DIR", "RESOUND_WORKERS",
		"RESOUND_LOG_LEVEL", "RESOUND_PING_INTERVAL", "RESOUND_ACTIVITY_TIMEOUT", "RESOUND_MAX_REQUEST_SIZE",
		"RESOUND_QUEUE_MAX_BYTES", "RESOUND_TLS_CERT", "RESOUND_TLS_KEY",
	} {
		if !strings.Contains(out, "  "+name) {
			t.Errorf("Usage does not list %s", name)
		}
	}
	if !strings.Contains(out, "(default 8080)") {
		t.Error("Usage does not show the port's default")
	}
	// Every field of Settings is listed: count the struct's tags.
	if got, want := len(settingNames(t)), countEnvTags(); got != want {
		t.Errorf("Usage lists %d settings, Settings has %d", got, want)
	}
}

func countEnvTags() int {
	n := 0
	typ := reflect.TypeFor[Settings]()
	for i := range typ.NumField() {
		if typ.Field(i).Tag.Get("envconfig") != "" {
			n++
		}
	}
	return n
}

// Regression: parseSeconds used to convert the float seconds to a Duration without a
// range check, so a value past ~292 years ("1e10"), "Inf" or "NaN" becomes
// a negative Duration (math.MinInt64 on amd64) and no error. The process
// settings are then refused with a misleading "must be positive", but the
// per-app REVERB_APP_PING_INTERVAL (and an apps file's ping_interval) is
// not checked again: the app gets a negative ping interval and the gateway
// pings its clients on every tick.
// Expected: an error naming the variable (or at least a positive interval).
func TestAppPingIntervalOutOfRange(t *testing.T) {
	for _, v := range []string{"1e10", "Inf", "NaN"} {
		t.Run(v, func(t *testing.T) {
			cleanEnv(t)
			setEnv(t, map[string]string{
				"REVERB_APP_ID": "1", "REVERB_APP_KEY": "k", "REVERB_APP_SECRET": "s",
				"REVERB_APP_PING_INTERVAL": v,
			})
			c, err := Load()
			if err != nil {
				if !strings.Contains(err.Error(), "REVERB_APP_PING_INTERVAL") {
					t.Fatalf("error %q does not name REVERB_APP_PING_INTERVAL", err)
				}
				return
			}
			app, _ := c.Apps.ByID("1")
			if app.PingInterval <= 0 {
				t.Fatalf("REVERB_APP_PING_INTERVAL=%s was accepted as %v", v, app.PingInterval.Duration())
			}
		})
	}
}
