package browser

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/dashboard"
	"github.com/resoundhq/resound/internal/wire"
)

// fakeDashboard stands in for internal/dashboard's handler in
// TestDashboardPage: it serves the real page (dashboard.UI()) under a
// prefix, with the API the page uses (see the comments in
// internal/dashboard/ui/static/api.js), and streams stats and console
// entries the test controls. It checks the page, not the server.
type fakeDashboard struct {
	srv    *httptest.Server
	prefix string // the dashboard path under REVERB_SERVER_PATH, e.g. /reverb/dashboard
	token  string
	apps   []fakeApp

	mu       sync.Mutex
	sessions map[string][]string        // cookie value → app ids it may see
	watchers map[chan sseMessage]string // open console streams → app
	statsN   map[string]int             // open stats streams per app
	done     chan struct{}
}

type fakeApp struct{ ID, Key, Secret string }

type sseMessage struct {
	event string
	data  []byte
}

const fakeCookie = "resound_dashboard"

func newFakeDashboard(t *testing.T, prefix, token string, apps ...fakeApp) *fakeDashboard {
	f := &fakeDashboard{prefix: prefix, token: token, apps: apps,
		sessions: map[string][]string{}, watchers: map[chan sseMessage]string{}, statsN: map[string]int{},
		done: make(chan struct{})}
	mux := http.NewServeMux()
	files := http.StripPrefix(prefix, http.FileServerFS(dashboard.UI()))
	mux.Handle("GET "+prefix+"/{$}", files)
	mux.Handle("GET "+prefix+"/static/", files)
	mux.HandleFunc("GET "+prefix, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, prefix+"/", http.StatusMovedPermanently)
	})
	mux.HandleFunc("POST "+prefix+"/api/login", f.login)
	mux.HandleFunc("POST "+prefix+"/api/logout", f.logout)
	mux.HandleFunc("GET "+prefix+"/api/apps", f.appsList)
	mux.HandleFunc("GET "+prefix+"/api/stats", f.stats)
	mux.HandleFunc("GET "+prefix+"/api/console", f.console)
	mux.HandleFunc("GET "+prefix+"/api/recent", f.recent)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// What the real handler must send too: the page has no inline
		// script or style, so this policy costs it nothing.
		w.Header().Set("Content-Security-Policy", "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		close(f.done)
		f.srv.CloseClientConnections()
		f.srv.Close()
	})
	return f
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeDashboard) login(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Token     string `json:"token"`
		AppKey    string `json:"app_key"`
		AppSecret string `json:"app_secret"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request"})
		return
	}
	var ids []string
	for _, a := range f.apps {
		if (req.Token != "" && req.Token == f.token) || (req.AppKey == a.Key && req.AppSecret == a.Secret && a.Secret != "") {
			ids = append(ids, a.ID)
		}
	}
	if len(ids) == 0 {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "Wrong token, or wrong app key and secret."})
		return
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	session := hex.EncodeToString(b)
	f.mu.Lock()
	f.sessions[session] = ids
	f.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: fakeCookie, Value: session, Path: f.prefix + "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	writeJSON(w, http.StatusOK, map[string]any{"apps": f.appList(ids)})
}

func (f *fakeDashboard) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(fakeCookie); err == nil {
		f.mu.Lock()
		delete(f.sessions, c.Value)
		f.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: fakeCookie, Value: "", Path: f.prefix + "/", MaxAge: -1})
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (f *fakeDashboard) appList(ids []string) []map[string]string {
	list := []map[string]string{}
	for _, a := range f.apps {
		for _, id := range ids {
			if a.ID == id {
				list = append(list, map[string]string{"id": a.ID, "key": a.Key})
			}
		}
	}
	return list
}

// session returns the app ids the request's cookie may see, or answers
// 401 and returns nil.
func (f *fakeDashboard) session(w http.ResponseWriter, r *http.Request) []string {
	if c, err := r.Cookie(fakeCookie); err == nil {
		f.mu.Lock()
		ids := f.sessions[c.Value]
		f.mu.Unlock()
		if ids != nil {
			return ids
		}
	}
	writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "not signed in"})
	return nil
}

// sessionApp is session, for a request about the app in ?app=.
func (f *fakeDashboard) sessionApp(w http.ResponseWriter, r *http.Request) (string, bool) {
	ids := f.session(w, r)
	if ids == nil {
		return "", false
	}
	app := r.URL.Query().Get("app")
	for _, id := range ids {
		if id == app {
			return app, true
		}
	}
	writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such app"})
	return "", false
}

func (f *fakeDashboard) appsList(w http.ResponseWriter, r *http.Request) {
	if ids := f.session(w, r); ids != nil {
		writeJSON(w, http.StatusOK, f.appList(ids))
	}
}

func sseStart(w http.ResponseWriter) http.Flusher {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fl := w.(http.Flusher)
	fl.Flush()
	return fl
}

func sseWrite(w http.ResponseWriter, m sseMessage) error {
	_, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", m.event, m.data)
	return err
}

// fakeStats is the figures at time ts: smooth waves, so the charts have
// a shape.
func fakeStats(app string, ts time.Time, i int) map[string]any {
	x := float64(ts.Unix())
	in := 40 + 25*math.Sin(x/23) + 8*math.Sin(x/5)
	errs := 0.0
	if i%37 > 33 {
		errs = float64(i%5) + 1
	}
	return map[string]any{
		"time_ms": ts.UnixMilli(), "app": app, "gateways": 3, "workers": 2,
		"connections": 1200 + int(80*math.Sin(x/40)), "channels": 311, "subscriptions": 2480, "presence_members": 57,
		"messages_in_per_s": math.Round(in*10) / 10, "deliveries_out_per_s": math.Round(in * 31),
		"errors_per_s": errs,
		"webhooks":     map[string]any{"sent": 15230 + i, "failed": 12, "dropped": 0, "sent_per_s": math.Round((6+3*math.Sin(x/17))*10) / 10},
	}
}

// stats sends three minutes of figures at once (time_ms a second apart,
// as if the page had been open), then one a second.
func (f *fakeDashboard) stats(w http.ResponseWriter, r *http.Request) {
	app, ok := f.sessionApp(w, r)
	if !ok {
		return
	}
	f.mu.Lock()
	f.statsN[app]++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.statsN[app]--
		f.mu.Unlock()
	}()
	fl := sseStart(w)
	now := time.Now().Truncate(time.Second)
	i := 0
	for ts := now.Add(-180 * time.Second); !ts.After(now); ts = ts.Add(time.Second) {
		b, _ := json.Marshal(fakeStats(app, ts, i))
		i++
		if sseWrite(w, sseMessage{"stats", b}) != nil {
			return
		}
	}
	fl.Flush()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-f.done:
			return
		case ts := <-tick.C:
			b, _ := json.Marshal(fakeStats(app, ts, i))
			i++
			if sseWrite(w, sseMessage{"stats", b}) != nil {
				return
			}
			fl.Flush()
		}
	}
}

func (f *fakeDashboard) console(w http.ResponseWriter, r *http.Request) {
	app, ok := f.sessionApp(w, r)
	if !ok {
		return
	}
	ch := make(chan sseMessage, 4096)
	f.mu.Lock()
	f.watchers[ch] = app
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.watchers, ch)
		f.mu.Unlock()
	}()
	fl := sseStart(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case <-f.done:
			return
		case m := <-ch:
			if sseWrite(w, m) != nil {
				return
			}
			// Whatever else waits goes in the same write.
			for more := true; more; {
				select {
				case m := <-ch:
					if sseWrite(w, m) != nil {
						return
					}
				default:
					more = false
				}
			}
			fl.Flush()
		}
	}
}

// watching tells how many console streams are open on app.
func (f *fakeDashboard) watching(app string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, a := range f.watchers {
		if a == app {
			n++
		}
	}
	return n
}

func (f *fakeDashboard) send(app string, m sseMessage) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch, a := range f.watchers {
		if a == app {
			ch <- m
		}
	}
}

// entry sends a console entry to the app's watchers. As the real handler
// does, what a process dropped before it (e.Dropped) goes first as a
// "dropped" event.
func (f *fakeDashboard) entry(app string, e wire.ConsoleEntry) {
	if e.Dropped > 0 {
		f.dropped(app, e.Dropped)
	}
	b, _ := json.Marshal(e)
	f.send(app, sseMessage{"entry", b})
}

// dropped tells the app's watchers that n entries were left out.
func (f *fakeDashboard) dropped(app string, n int) {
	b, _ := json.Marshal(map[string]int{"count": n})
	f.send(app, sseMessage{"dropped", b})
}

func (f *fakeDashboard) recent(w http.ResponseWriter, r *http.Request) {
	app, ok := f.sessionApp(w, r)
	if !ok {
		return
	}
	now := time.Now().UnixMilli()
	writeJSON(w, http.StatusOK, []wire.ConsoleEntry{
		{TimeMS: now - 95_000, Kind: "error", Process: "gateway-b", SocketID: "2811.99120", Detail: "4301: client event rate limit exceeded"},
		{TimeMS: now - 41_000, Kind: "error", Process: "gateway-a", SocketID: "1093.44210", Channel: "private-orders." + app, Detail: "4009: subscription refused: invalid signature"},
		{TimeMS: now - 7_000, Kind: "error", Process: "worker-1", Channel: "orders", Detail: "webhook to https://example.test/hooks: 503 Service Unavailable (retrying)"},
	})
}
