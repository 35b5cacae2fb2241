package ops_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/resoundhq/resound/internal/ops"
)

type response struct {
	status int
	header http.Header
	body   string
}

func serve(h http.Handler, method, path string) response {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(method, path, nil))
	return response{status: w.Code, header: w.Result().Header, body: w.Body.String()}
}

// checkJSON checks the content type and the body of a JSON answer.
func checkJSON(t *testing.T, what string, r response) {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type = %q, want application/json", what, ct)
	}
	if !json.Valid([]byte(r.body)) {
		t.Errorf("%s: body %q is not JSON", what, r.body)
	}
}

// named answers 200 with its name, to see which handler a route reached.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, name) })
}

func TestMuxRoutes(t *testing.T) {
	ready := true
	mux := ops.NewMux(ops.Options{Metrics: named("metrics"), Pprof: true, Health: ops.Health{Ready: func() bool { return ready }}})
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/metrics", 200, "metrics"},
		{"/debug/pprof/", 200, "goroutine"},
		{"/debug/pprof/cmdline", 200, ""},
		{"/debug/pprof", 307, ""}, // to /debug/pprof/: the mux redirects a subtree's root
		{"/up", 200, `{"health":"OK"}`},
		{"/livez", 200, `{"health":"OK"}`},
		{"/metricsx", 404, ""},
		{"/debug/pprofx", 404, ""},
		{"/apps/123/events", 404, ""},
		// No REVERB_SERVER_PATH on the operations address.
		{"/reverb/metrics", 404, ""},
		{"/reverb/up", 404, ""},
	} {
		r := serve(mux, http.MethodGet, tc.path)
		if r.status != tc.status || !strings.Contains(r.body, tc.body) {
			t.Errorf("GET %s: got %d %.100q, want %d %q", tc.path, r.status, r.body, tc.status, tc.body)
		}
		if tc.status == 404 {
			checkJSON(t, tc.path, r)
		}
	}
	ready = false
	if r := serve(mux, http.MethodGet, "/up"); r.status != http.StatusServiceUnavailable || r.body != `{"health":"STARTING"}` {
		t.Errorf("/up while not ready: got %d %s, want 503 STARTING", r.status, r.body)
	}
	if r := serve(mux, http.MethodGet, "/livez"); r.status != http.StatusOK {
		t.Errorf("/livez while not ready: got %d %s, want 200", r.status, r.body)
	}
}

// Without a profiler (RESOUND_PPROF off) or metrics handler, those routes
// are 404 like any unknown path.
func TestMuxWithoutHandlers(t *testing.T) {
	mux := ops.NewMux(ops.Options{})
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/heap"} {
		r := serve(mux, http.MethodGet, path)
		checkJSON(t, path, r)
		if r.status != http.StatusNotFound {
			t.Errorf("GET %s: got %d %s, want 404", path, r.status, r.body)
		}
	}
	if r := serve(mux, http.MethodHead, "/up"); r.status != http.StatusOK {
		t.Errorf("HEAD /up with no Ready: got %d, want 200", r.status)
	}
}

func TestUp(t *testing.T) {
	ready := false
	h := ops.Health{Ready: func() bool { return ready }}
	r := serve(http.HandlerFunc(h.Up), http.MethodGet, "/up")
	checkJSON(t, "not ready", r)
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("not ready: got %d %s, want 503", r.status, r.body)
	}
	ready = true
	r = serve(http.HandlerFunc(h.Up), http.MethodGet, "/up")
	checkJSON(t, "ready", r)
	if r.status != http.StatusOK || r.body != `{"health":"OK"}` {
		t.Fatalf("ready: got %d %s, want 200 {\"health\":\"OK\"}", r.status, r.body)
	}
	if r.header.Get("Content-Length") != "15" {
		t.Errorf("Content-Length = %q, want 15 as Reverb sends", r.header.Get("Content-Length"))
	}
	r = serve(http.HandlerFunc(h.Up), http.MethodPost, "/up")
	checkJSON(t, "POST", r)
	if r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /up: got %d Allow %q, want 405 Allow GET, HEAD", r.status, r.header.Get("Allow"))
	}
	// The worker's word while it drains.
	h = ops.Health{Ready: func() bool { return false }, NotReady: "UNAVAILABLE"}
	if r := serve(http.HandlerFunc(h.Up), http.MethodGet, "/up"); r.body != `{"health":"UNAVAILABLE"}` {
		t.Errorf("NotReady: got %s", r.body)
	}
}

// The public port answers the probes under the path prefix, in front of
// the API, and hands it everything else.
func TestWithProbes(t *testing.T) {
	for _, prefix := range []string{"", "/reverb"} {
		h := ops.WithProbes(prefix, ops.Health{}, named("api"))
		for _, tc := range []struct {
			method, path string
			status       int
			body         string
		}{
			{http.MethodGet, prefix + "/up", 200, `{"health":"OK"}`},
			{http.MethodHead, prefix + "/up", 200, ""},
			{http.MethodGet, prefix + "/livez", 200, `{"health":"OK"}`},
			{http.MethodPost, prefix + "/up", 405, ""},
			{http.MethodGet, prefix + "/metrics", 200, "api"},
			{http.MethodGet, prefix + "/up/", 200, "api"},
			{http.MethodGet, prefix + "/apps/1/channels", 200, "api"},
		} {
			r := serve(h, tc.method, tc.path)
			if r.status != tc.status || (tc.body != "" && r.body != tc.body) {
				t.Errorf("%s %s: got %d %s, want %d %s", tc.method, tc.path, r.status, r.body, tc.status, tc.body)
			}
		}
	}
	h := ops.WithProbes("/reverb", ops.Health{}, named("api"))
	if r := serve(h, http.MethodGet, "/up"); r.body != "api" {
		t.Errorf("/up without the prefix: got %d %s, want the API's answer", r.status, r.body)
	}
}
