// Package httpapi is the Pusher HTTP API that producers call: Laravel's
// broadcaster (pusher-http-php), the pusher npm SDK, or anything that signs
// requests the Pusher way. Triggers become jobs in the JetStream queue; the
// API answers 200 only once JetStream has stored the job.
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	pathpkg "path"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/protocol"
)

// Publisher stores jobs durably.
type Publisher interface {
	Publish(ctx context.Context, job *queue.Job) (uint64, error)
}

// Options configure the API.
type Options struct {
	Apps      *config.Apps
	Publisher Publisher
	// The cluster's answers, one interface per question (queries.go). A
	// route whose question has no answerer here is not mounted: it answers
	// 404, as for an unknown route, and a trigger's info is left out.
	Channels   ChannelQuerier
	Presence   PresenceReader
	Cache      CacheReader
	Terminator Terminator
	Limits     protocol.Limits
	// MaxBodyBytes bounds a request body; larger gets 413.
	MaxBodyBytes int64
	// PathPrefix is REVERB_SERVER_PATH. Routes live under it, but
	// signatures cover the path without it, as pusher-http-php signs.
	PathPrefix string
	// PublishTimeout bounds the wait for JetStream's ack.
	PublishTimeout time.Duration
	// Now is the clock for the timestamp window; nil means time.Now.
	Now func() time.Time
	// Triggered counts events accepted through the API; may be nil.
	Triggered prometheus.Counter
	// Accepted, when set, hears of every trigger JetStream stored, before
	// it is answered (the dashboard's figures and debug console). It must
	// not block.
	Accepted func(app *config.App, events []protocol.Trigger)
	Log      zerolog.Logger
}

// apiError is a message for the client, worded for people, which is why it
// is capitalized and punctuated.
type apiError string

func (e apiError) Error() string { return string(e) }

// TimestampWindow is how far auth_timestamp may be from now, as Pusher
// enforces (Reverb does not check it at all).
const TimestampWindow = 600 * time.Second

// API is the HTTP handler.
type API struct {
	opts Options
	mux  *http.ServeMux
}

// New returns the API handler.
func New(opts Options) *API {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = 5 * time.Second
	}
	a := &API{opts: opts, mux: http.NewServeMux()}
	a.mount()
	return a
}

// route is one endpoint of the API: its method, its path after
// {prefix}/apps/{app_id} (a net/http pattern, wildcards and all), and the
// handler it reaches once the request is authentic.
type route struct {
	method string
	path   string
	serve  func(w http.ResponseWriter, r *http.Request, req *request)
}

// request is what every route gets: the app the path names and the body,
// both already checked.
type request struct {
	app  *config.App
	body []byte
}

// routes is every route of the API, the one place to add one: a line here
// and its handler (and, for a new question to the cluster, an interface
// and an Options field in queries.go). A route whose answerers are missing
// is left out, so that it answers 404 as an unknown one does.
func (a *API) routes() []route {
	o := a.opts
	attrs := o.Channels != nil && o.Presence != nil && o.Cache != nil
	var rs []route
	for _, rt := range []struct {
		route
		mounted bool
	}{
		{route{http.MethodPost, "/events", a.events}, true},
		{route{http.MethodPost, "/batch_events", a.batchEvents}, true},
		{route{http.MethodGet, "/channels", a.channels}, attrs},
		{route{http.MethodGet, "/channels/{channel_name}", a.channel}, attrs},
		{route{http.MethodGet, "/channels/{channel_name}/users", a.users}, o.Presence != nil},
		{route{http.MethodGet, "/connections", a.connections}, o.Channels != nil},
		{route{http.MethodPost, "/users/{user_id}/terminate_connections", a.terminate}, o.Terminator != nil},
	} {
		if rt.mounted {
			rs = append(rs, rt.route)
		}
	}
	return rs
}

// mount registers the routes on the API's mux under the path prefix.
//
// Each path gets two patterns: "METHOD path" for the route (net/http lets
// HEAD through a GET pattern, as the API always has), and the bare path,
// which catches every other method and answers 405 with Allow. The mux's
// own 405 would be text/plain; the Pusher SDKs read {"error": ...}.
func (a *API) mount() {
	base := escapePrefix(a.opts.PathPrefix) + "/apps/{app_id}"
	allow := map[string][]string{}
	var paths []string
	for _, rt := range a.routes() {
		a.mux.Handle(rt.method+" "+base+rt.path, a.endpoint(rt.serve))
		if allow[rt.path] == nil {
			paths = append(paths, rt.path)
		}
		allow[rt.path] = append(allow[rt.path], rt.method)
	}
	for _, p := range paths {
		a.mux.Handle(base+p, a.wrongMethod(strings.Join(allow[p], ", ")))
	}
	a.mux.HandleFunc("/", a.notFound)
}

// escapePrefix makes REVERB_SERVER_PATH a literal in a mux pattern: each
// segment escaped, so that braces or a percent sign in it are matched as
// themselves (the mux unescapes literal segments), never read as a
// wildcard.
func escapePrefix(prefix string) string {
	segs := strings.Split(prefix, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The mux answers a path that is not canonical (//, dot segments, a
	// trailing slash) with a redirect, in HTML. No client of the API
	// sends one, and a redirect of a signed POST would not be followed:
	// 404, as for any path that names no route (or is not absolute).
	if p := r.URL.Path; !strings.HasPrefix(p, "/") || p != pathpkg.Clean(p) {
		writeError(w, http.StatusNotFound, "Not found.")
		return
	}
	a.mux.ServeHTTP(w, r)
}

// app is the app the path names, or nil once the 404 Pusher answers for
// an unknown one has been written.
func (a *API) app(w http.ResponseWriter, r *http.Request) *config.App {
	id := r.PathValue("app_id")
	app, ok := a.opts.Apps.ByID(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("No matching application for ID [%s].", id))
		return nil
	}
	return app
}

// endpoint checks what every route needs, in the order Pusher does: the
// app, the body's size, then the signature over the path without the
// prefix (as pusher-http-php signs it).
func (a *API) endpoint(serve func(http.ResponseWriter, *http.Request, *request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		app := a.app(w, r)
		if app == nil {
			return
		}
		body, status, err := a.readBody(r)
		if err != nil {
			writeError(w, status, err.Error())
			return
		}
		path, _ := strings.CutPrefix(r.URL.Path, a.opts.PathPrefix)
		if err := a.authenticate(r, path, app, body); err != nil {
			writeError(w, http.StatusUnauthorized, err.Error())
			return
		}
		serve(w, r, &request{app: app, body: body})
	})
}

// wrongMethod answers a route's path asked with another method: 404 for an
// unknown app still comes first.
func (a *API) wrongMethod(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.app(w, r) != nil {
			methodNotAllowed(w, allow)
		}
	})
}

// notFound answers a path that names no route, saying so for an unknown
// app as Reverb does.
func (a *API) notFound(w http.ResponseWriter, r *http.Request) {
	if rest, ok := strings.CutPrefix(r.URL.Path, a.opts.PathPrefix+"/apps/"); ok {
		id, _, _ := strings.Cut(rest, "/")
		if _, ok := a.opts.Apps.ByID(id); !ok {
			writeError(w, http.StatusNotFound, fmt.Sprintf("No matching application for ID [%s].", id))
			return
		}
	}
	writeError(w, http.StatusNotFound, "Not found.")
}

// events answers POST /apps/{app_id}/events.
func (a *API) events(w http.ResponseWriter, r *http.Request, req *request) {
	a.trigger(w, r, req, false)
}

// batchEvents answers POST /apps/{app_id}/batch_events.
func (a *API) batchEvents(w http.ResponseWriter, r *http.Request, req *request) {
	a.trigger(w, r, req, true)
}

// trigger parses one event or a batch, stores it as one job and answers
// once JetStream has it.
func (a *API) trigger(w http.ResponseWriter, r *http.Request, req *request, batch bool) {
	if !utf8.Valid(req.body) {
		// encoding/json would turn the bad bytes into U+FFFD without a
		// word; the producer should hear that its event is not what it
		// meant.
		writeError(w, http.StatusBadRequest, "The request body is not valid UTF-8.")
		return
	}
	var events []protocol.Trigger
	var err error
	if batch {
		events, err = protocol.ParseBatch(req.body, a.opts.Limits)
	} else {
		var t protocol.Trigger
		t, err = protocol.ParseTrigger(req.body, a.opts.Limits)
		events = []protocol.Trigger{t}
	}
	if err != nil {
		var re *protocol.RequestError
		if errors.As(err, &re) {
			writeError(w, re.Status, re.Message)
			return
		}
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !a.enqueue(w, r, &queue.Job{AppID: req.app.ID, Events: events}) {
		return
	}
	if a.opts.Triggered != nil {
		a.opts.Triggered.Add(float64(len(events)))
	}
	if a.opts.Accepted != nil {
		a.opts.Accepted(req.app, events)
	}
	a.respondEvents(w, r, req.app, batch, events)
}

// respondEvents answers a stored trigger: {} or, when info was asked for,
// the channels' attributes ({"channels":{...}}, or {"batch":[...]} aligned
// with the batch).
func (a *API) respondEvents(w http.ResponseWriter, r *http.Request, app *config.App, batch bool, events []protocol.Trigger) {
	wantInfo := false
	for _, ev := range events {
		wantInfo = wantInfo || ev.Info != ""
	}
	if !wantInfo || a.opts.Channels == nil || a.opts.Presence == nil {
		writeJSON(w, http.StatusOK, `{}`)
		return
	}
	ctx, cancel := a.queryCtx(r)
	defer cancel()
	infos := make([]map[string]any, len(events))
	var single map[string]map[string]any
	for i, ev := range events {
		info, err := a.eventInfo(ctx, app, ev)
		if err != nil {
			// The event is stored and will be delivered; only the
			// attributes are missing.
			a.opts.Log.Warn().Err(err).Msg("trigger info")
			writeJSON(w, http.StatusOK, `{}`)
			return
		}
		if !batch {
			single = info
			break
		}
		infos[i] = map[string]any{}
		for _, ch := range ev.Channels {
			for k, v := range info[ch] {
				infos[i][k] = v
			}
		}
	}
	if batch {
		writeValue(w, http.StatusOK, map[string]any{"batch": infos})
		return
	}
	writeValue(w, http.StatusOK, map[string]any{"channels": single})
}

func (a *API) enqueue(w http.ResponseWriter, r *http.Request, job *queue.Job) bool {
	ctx, cancel := context.WithTimeout(r.Context(), a.opts.PublishTimeout)
	defer cancel()
	seq, err := a.opts.Publisher.Publish(ctx, job)
	if err != nil {
		// Not stored means not accepted: the producer must retry, so say
		// so with 503 rather than pretend with 200.
		a.opts.Log.Error().Err(err).Str("app_id", job.AppID).Msg("enqueueing job")
		writeError(w, http.StatusServiceUnavailable, "The event could not be queued; try again.")
		return false
	}
	a.opts.Log.Debug().Str("app_id", job.AppID).Uint64("seq", seq).Int("events", len(job.Events)).Msg("job queued")
	return true
}

func (a *API) readBody(r *http.Request) ([]byte, int, error) {
	if r.ContentLength > a.opts.MaxBodyBytes {
		return nil, http.StatusRequestEntityTooLarge, apiError("Payload too large.")
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, a.opts.MaxBodyBytes+1))
	if err != nil {
		return nil, http.StatusBadRequest, apiError("Could not read the request body.")
	}
	if int64(len(body)) > a.opts.MaxBodyBytes {
		return nil, http.StatusRequestEntityTooLarge, apiError("Payload too large.")
	}
	return body, 0, nil
}

// authenticate checks the request signature fully, as Pusher does: the key
// must be the app's, the timestamp within the window, the version 1.0,
// body_md5 the body's, and the signature right (compared in constant time).
func (a *API) authenticate(r *http.Request, path string, app *config.App, body []byte) error {
	q := r.URL.Query()
	key, ts, version, sig := q.Get("auth_key"), q.Get("auth_timestamp"), q.Get("auth_version"), q.Get("auth_signature")
	if key == "" || ts == "" || sig == "" {
		return apiError("Missing auth_key, auth_timestamp or auth_signature.")
	}
	if subtle.ConstantTimeCompare([]byte(key), []byte(app.Key)) != 1 {
		return apiError("auth_key does not belong to this app.")
	}
	if version != "1.0" {
		return apiError("auth_version must be 1.0.")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return apiError("auth_timestamp must be a Unix time in seconds.")
	}
	if d := a.opts.Now().Sub(time.Unix(sec, 0)); d > TimestampWindow || d < -TimestampWindow {
		return apiError(fmt.Sprintf("auth_timestamp is more than %d seconds from the server's time.", int(TimestampWindow/time.Second)))
	}
	if len(body) > 0 {
		if subtle.ConstantTimeCompare([]byte(q.Get("body_md5")), []byte(protocol.BodyMD5(body))) != 1 {
			return apiError("body_md5 does not match the body.")
		}
	}
	if !protocol.VerifyRequestSignature(app.Secret, r.Method, path, q, sig) {
		return apiError("Authentication signature invalid.")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// writeError answers with a JSON body {"error": "..."}, which the Pusher
// SDKs put into the exception they raise.
func writeError(w http.ResponseWriter, status int, message string) {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{message})
	writeJSON(w, status, string(b))
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "Method not allowed.")
}
