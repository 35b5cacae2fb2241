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
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/pkg/config"
	"github.com/resoundhq/resound/pkg/queue"
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
	// Cluster answers queries; nil disables the query endpoints (404).
	Cluster Cluster
	Limits  protocol.Limits
	// MaxBodyBytes bounds a request body; larger gets 413.
	MaxBodyBytes int64
	// PathPrefix is REVERB_SERVER_PATH. Routes live under it, but
	// signatures cover the path without it, as pusher-http-php signs.
	PathPrefix string
	// Ready reports whether the gateway accepts connections (GET /up).
	Ready func() bool
	// PublishTimeout bounds the wait for JetStream's ack.
	PublishTimeout time.Duration
	// Now is the clock for the timestamp window; nil means time.Now.
	Now func() time.Time
	// Triggered counts events accepted through the API; may be nil.
	Triggered prometheus.Counter
	Log       zerolog.Logger
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
}

// New returns the API handler.
func New(opts Options) *API {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = 5 * time.Second
	}
	if opts.Ready == nil {
		opts.Ready = func() bool { return true }
	}
	return &API{opts: opts}
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path, ok := strings.CutPrefix(r.URL.Path, a.opts.PathPrefix)
	if !ok {
		writeError(w, http.StatusNotFound, "Not found.")
		return
	}
	// Load balancers probe the public port, so the health routes stay
	// here; /metrics and /debug/pprof/ do not (they name every app and
	// expose the process): they are served only by NewOps, on
	// RESOUND_OPS_ADDR.
	if serveHealth(w, r, path, a.opts.Ready) {
		return
	}
	rest, ok := strings.CutPrefix(path, "/apps/")
	if !ok {
		writeError(w, http.StatusNotFound, "Not found.")
		return
	}
	appID, action, _ := strings.Cut(rest, "/")
	app, ok := a.opts.Apps.ByID(appID)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("No matching application for ID [%s].", appID))
		return
	}
	route, arg, method := routeOf(action)
	if route == "" || (route != "events" && route != "batch_events" && a.opts.Cluster == nil) {
		writeError(w, http.StatusNotFound, "Not found.")
		return
	}
	if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
		methodNotAllowed(w, method)
		return
	}
	body, status, err := a.readBody(r)
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	if err := a.authenticate(r, path, app, body); err != nil {
		writeError(w, http.StatusUnauthorized, err.Error())
		return
	}
	switch route {
	case "channels":
		a.channels(w, r, app)
		return
	case "channel":
		a.channel(w, r, app, arg)
		return
	case "users":
		a.users(w, r, app, arg)
		return
	case "connections":
		a.connections(w, r, app)
		return
	case "terminate":
		a.terminate(w, r, app, arg)
		return
	}
	if !utf8.Valid(body) {
		// encoding/json would turn the bad bytes into U+FFFD without a
		// word; the producer should hear that its event is not what it
		// meant.
		writeError(w, http.StatusBadRequest, "The request body is not valid UTF-8.")
		return
	}
	var events []protocol.Trigger
	if route == "events" {
		var t protocol.Trigger
		t, err = protocol.ParseTrigger(body, a.opts.Limits)
		events = []protocol.Trigger{t}
	} else {
		events, err = protocol.ParseBatch(body, a.opts.Limits)
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
	if !a.enqueue(w, r, &queue.Job{AppID: app.ID, Events: events}) {
		return
	}
	if a.opts.Triggered != nil {
		a.opts.Triggered.Add(float64(len(events)))
	}
	a.respondEvents(w, r, app, route == "batch_events", events)
}

// respondEvents answers a stored trigger: {} or, when info was asked for,
// the channels' attributes ({"channels":{...}}, or {"batch":[...]} aligned
// with the batch).
func (a *API) respondEvents(w http.ResponseWriter, r *http.Request, app *config.App, batch bool, events []protocol.Trigger) {
	wantInfo := false
	for _, ev := range events {
		wantInfo = wantInfo || ev.Info != ""
	}
	if !wantInfo || a.opts.Cluster == nil {
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

// routeOf maps the part of the path after /apps/{id}/ to a route, its
// argument and its method.
func routeOf(action string) (route, arg, method string) {
	switch {
	case action == "events":
		return "events", "", http.MethodPost
	case action == "batch_events":
		return "batch_events", "", http.MethodPost
	case action == "channels":
		return "channels", "", http.MethodGet
	case action == "connections":
		return "connections", "", http.MethodGet
	case strings.HasPrefix(action, "channels/"):
		name := strings.TrimPrefix(action, "channels/")
		if ch, ok := strings.CutSuffix(name, "/users"); ok {
			return "users", ch, http.MethodGet
		}
		if strings.Contains(name, "/") {
			return "", "", ""
		}
		return "channel", name, http.MethodGet
	case strings.HasPrefix(action, "users/") && strings.HasSuffix(action, "/terminate_connections"):
		user := strings.TrimSuffix(strings.TrimPrefix(action, "users/"), "/terminate_connections")
		if user == "" || strings.Contains(user, "/") {
			return "", "", ""
		}
		return "terminate", user, http.MethodPost
	}
	return "", "", ""
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

// serveHealth answers /livez and /up, on the public port and on the
// operations address alike, and reports whether path was one of them.
func serveHealth(w http.ResponseWriter, r *http.Request, path string, ready func() bool) bool {
	switch path {
	case "/livez":
		// Liveness: the process answers. Unlike /up it stays 200 while
		// NATS is away, so an orchestrator does not restart a gateway (and
		// drop its sockets) for an outage elsewhere.
		writeJSON(w, http.StatusOK, `{"health":"OK"}`)
	case "/up":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, "GET, HEAD")
		} else if !ready() {
			writeJSON(w, http.StatusServiceUnavailable, `{"health":"STARTING"}`)
		} else {
			writeJSON(w, http.StatusOK, `{"health":"OK"}`)
		}
	default:
		return false
	}
	return true
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
