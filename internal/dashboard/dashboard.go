// Package dashboard serves the live dashboard (issue 11): an embedded page
// and the JSON and Server-Sent-Events API it reads, under one path
// (RESOUND_DASHBOARD_PATH), on the gateway's port or a listener of its
// own (RESOUND_DASHBOARD_ADDR). It shows the whole cluster: figures are
// asked of every process (wire.Stats) and summed, and the debug console
// is what every process publishes for an app while a dashboard watches
// it (internal/console).
//
// The API, under the dashboard's path P:
//
//	GET  P/, P/static/...  the page (UI)
//	POST P/api/login       {"token"} or {"app_key","app_secret"} → {"apps":[...]} and a session cookie
//	POST P/api/logout
//	GET  P/api/apps        the session's apps
//	GET  P/api/stats       ?app=: text/event-stream, "stats" once a second
//	GET  P/api/console     ?app=: text/event-stream, "entry" and "dropped"
//	GET  P/api/recent      ?app=: the last errors this gateway saw
//
// Off unless RESOUND_DASHBOARD is set: then nothing is mounted at all.
package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/wire"
)

// Defaults of Options.
const (
	// DefaultMaxStreams bounds the dashboard's open streams (stats and
	// console) on one gateway. Each holds one of the gateway's plain HTTP
	// connections (RESOUND_MAX_HTTP_CONNECTIONS) for as long as a page is
	// open: the dashboard must leave the API room.
	DefaultMaxStreams = 64
	// DefaultLease is how long a console watch holds without renewal; it
	// is renewed every third of it while a console stream is open, so a
	// closed page stops the processes publishing within this.
	DefaultLease = 15 * time.Second
	// DefaultInterval is how often the figures are gathered and sent.
	DefaultInterval = time.Second
	// DefaultStatsWait bounds the wait for the processes' figures in each
	// round: a process that has not answered by then counts next time.
	DefaultStatsWait = 500 * time.Millisecond
	// DefaultStreamBuffer is how many console entries may wait for one
	// browser; past it they are dropped for that browser alone, and it is
	// told so.
	DefaultStreamBuffer = 256
	// DefaultHeartbeat is how often an idle stream sends a comment, so
	// that proxies see it alive and a browser gone away is noticed.
	DefaultHeartbeat = 15 * time.Second
	// sessionTTL is a login's life (the cookie's and the signature's).
	sessionTTL = 12 * time.Hour
)

// Options configure a Dashboard.
type Options struct {
	// Context is the dashboard's life: its streams end with it.
	Context context.Context
	Apps    *config.Apps
	// Conn asks the processes for their figures and carries the console.
	Conn *nats.Conn
	// Path is where the dashboard is served: REVERB_SERVER_PATH then
	// RESOUND_DASHBOARD_PATH on the gateway's port, RESOUND_DASHBOARD_PATH
	// alone on a listener of its own.
	Path string
	// Token opens every app (RESOUND_DASHBOARD_TOKEN); empty, only an
	// app's key and secret open it, that app alone.
	Token string
	// Secure marks the session cookie Secure (the port serves TLS).
	Secure bool
	// TrustedProxies name the client in X-Forwarded-For, for the login's
	// rate limit.
	TrustedProxies config.CIDRs
	// Channels counts an app's distinct channels across the cluster (a
	// sum of the gateways' counts would count a channel once per gateway
	// it is on). Nil: that sum.
	Channels func(ctx context.Context, app string) (int, error)
	// Recent is this gateway's last error entries of an app.
	Recent func(app string) []wire.ConsoleEntry
	// UI is the page (nil: the embedded one, UI()).
	UI fs.FS

	MaxStreams   int
	Lease        time.Duration
	Interval     time.Duration
	StatsWait    time.Duration
	StreamBuffer int
	Heartbeat    time.Duration
	// LoginBurst and LoginEvery rate-limit failed logins per client
	// address: LoginBurst at once, then one per LoginEvery.
	LoginBurst int
	LoginEvery time.Duration
	Now        func() time.Time
	Log        zerolog.Logger
}

func (o *Options) defaults() {
	if o.Context == nil {
		o.Context = context.Background()
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.StatsWait <= 0 {
		o.StatsWait = DefaultStatsWait
	}
	if o.StreamBuffer <= 0 {
		o.StreamBuffer = DefaultStreamBuffer
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.LoginBurst <= 0 {
		o.LoginBurst = 10
	}
	if o.LoginEvery <= 0 {
		o.LoginEvery = 6 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.UI == nil {
		o.UI = UI()
	}
}

// Dashboard is the HTTP handler.
type Dashboard struct {
	opts Options
	path string // Options.Path without its trailing slash ("" for the root)
	// key signs the session cookies: derived from the token and the apps'
	// secrets, so every gateway of a cluster, configured alike, accepts
	// every other's cookies, and changing a secret ends the sessions.
	key     []byte
	logins  *limiter
	streams atomic.Int64
	// failLog says a login failed, once per 10 s at most: guesses from
	// many addresses must not fill the disk.
	failLog zerolog.Logger

	mu       sync.Mutex
	watches  map[string]*watch // open console streams, by app
	stats    map[*statsStream]struct{}
	gathered bool // the stats goroutine runs
	// rounds counts the stats rounds, and channels holds the last count
	// of each app's distinct channels; only the stats goroutine uses them.
	rounds   int
	channels map[string]int
}

// New builds a dashboard.
func New(opts Options) (*Dashboard, error) {
	opts.defaults()
	if opts.Apps == nil || opts.Conn == nil {
		return nil, errors.New("dashboard: Apps and Conn are required")
	}
	p := strings.TrimRight(opts.Path, "/")
	if p != "" && !strings.HasPrefix(p, "/") {
		return nil, errors.New("dashboard: the path must start with /")
	}
	d := &Dashboard{
		opts: opts, path: p, key: sessionKey(opts.Token, opts.Apps),
		logins:  newLimiter(opts.LoginBurst, opts.LoginEvery, opts.Now),
		failLog: opts.Log.Sample(&zerolog.BurstSampler{Burst: 1, Period: 10 * time.Second}),
		watches: map[string]*watch{}, stats: map[*statsStream]struct{}{}, channels: map[string]int{},
	}
	return d, nil
}

// Path is where the dashboard is served, without a trailing slash.
func (d *Dashboard) Path() string { return d.path }

// Mount serves the dashboard's path with d and every other with next:
// the gateway's port, where next is the API.
func (d *Dashboard) Mount(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; p == d.path || strings.HasPrefix(p, d.path+"/") {
			d.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Security headers on every answer: the page loads nothing but its own
// files, is never framed (clickjacking), and no type is sniffed.
const csp = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	rest, ok := strings.CutPrefix(r.URL.Path, d.path)
	if !ok || (rest != "" && !strings.HasPrefix(rest, "/")) {
		writeError(w, http.StatusNotFound, "Not found.")
		return
	}
	switch {
	case rest == "":
		// The page's relative links need the slash.
		http.Redirect(w, r, d.path+"/", http.StatusMovedPermanently)
	case rest == "/" || strings.HasPrefix(rest, "/static/"):
		d.serveUI(w, r, rest)
	case strings.HasPrefix(rest, "/api/"):
		h.Set("Cache-Control", "no-store")
		d.serveAPI(w, r, rest[len("/api/"):])
	default:
		writeError(w, http.StatusNotFound, "Not found.")
	}
}

// serveUI serves the page: index.html at P/, its files under P/static/.
func (d *Dashboard) serveUI(w http.ResponseWriter, r *http.Request, rest string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "Method not allowed.")
		return
	}
	name := "index.html"
	if rest != "/" {
		name = rest[1:] // static/...
	}
	// fs.ValidPath refuses "..", "." and empty elements: nothing outside
	// the page's files, and no directory listing below.
	if !fs.ValidPath(name) {
		writeError(w, http.StatusNotFound, "Not found.")
		return
	}
	if st, err := fs.Stat(d.opts.UI, name); err != nil || st.IsDir() {
		writeError(w, http.StatusNotFound, "Not found.")
		return
	}
	// The files are in the binary: a new binary is a new page, so the
	// browser asks every time (embedded files have no modification time
	// to answer 304 with, and they are small).
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, d.opts.UI, name)
}

func (d *Dashboard) serveAPI(w http.ResponseWriter, r *http.Request, route string) {
	method := http.MethodGet
	switch route {
	case "login", "logout":
		method = http.MethodPost
	case "apps", "stats", "console", "recent":
	default:
		writeError(w, http.StatusNotFound, "Not found.")
		return
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		writeError(w, http.StatusMethodNotAllowed, "Method not allowed.")
		return
	}
	switch route {
	case "login":
		d.login(w, r)
		return
	case "logout":
		d.logout(w, r)
		return
	}
	sess, ok := d.session(r)
	if !ok {
		writeError(w, http.StatusUnauthorized, "Log in first.")
		return
	}
	if route == "apps" {
		writeValue(w, http.StatusOK, map[string]any{"apps": d.appsOf(sess)})
		return
	}
	app := r.URL.Query().Get("app")
	if _, known := d.opts.Apps.ByID(app); !known || !sess.allows(app) {
		// The same answer for an app that does not exist and one the
		// session may not see: a session learns nothing of other apps.
		writeError(w, http.StatusForbidden, "This session may not see that app.")
		return
	}
	switch route {
	case "stats":
		d.serveStats(w, r, app)
	case "console":
		d.serveConsole(w, r, app)
	case "recent":
		recent := []wire.ConsoleEntry{}
		if d.opts.Recent != nil {
			recent = append(recent, d.opts.Recent(app)...)
		}
		writeValue(w, http.StatusOK, recent)
	}
}

// appRef is an app as the page lists it.
type appRef struct {
	ID  string `json:"id"`
	Key string `json:"key"`
}

func (d *Dashboard) appsOf(s session) []appRef {
	out := []appRef{}
	for _, app := range d.opts.Apps.All() {
		if s.allows(app.ID) {
			out = append(out, appRef{ID: app.ID, Key: app.Key})
		}
	}
	return out
}

func writeValue(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"Internal error."}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, status int, message string) {
	writeValue(w, status, struct {
		Error string `json:"error"`
	}{message})
}
