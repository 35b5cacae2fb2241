package httpapi_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/resoundhq/resound/pkg/httpapi"
)

// named answers 200 with its name, to see which handler a route reached.
func named(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, name) })
}

func TestOpsRoutes(t *testing.T) {
	ready := true
	ops := httpapi.NewOps(httpapi.OpsOptions{Metrics: named("metrics"), Debug: named("pprof"), Ready: func() bool { return ready }})
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/metrics", 200, "metrics"},
		{"/debug/pprof/", 200, "pprof"},
		{"/debug/pprof/heap", 200, "pprof"},
		{"/debug/pprof", 200, "pprof"}, // the profiler's mux redirects it
		{"/up", 200, `{"health":"OK"}`},
		{"/livez", 200, `{"health":"OK"}`},
		{"/metricsx", 404, ""},
		{"/debug/pprofx", 404, ""},
		{"/apps/" + appID + "/events", 404, ""},
		// No REVERB_SERVER_PATH on the operations address.
		{"/reverb/metrics", 404, ""},
	} {
		r := serve(ops, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if r.status != tc.status || (tc.body != "" && r.body != tc.body) {
			t.Errorf("GET %s: got %d %q, want %d %q", tc.path, r.status, r.body, tc.status, tc.body)
		}
		if tc.status == 404 {
			checkJSON(t, r)
		}
	}
	ready = false
	if r := serve(ops, httptest.NewRequest(http.MethodGet, "/up", nil)); r.status != http.StatusServiceUnavailable {
		t.Errorf("/up while not ready: got %d %s, want 503", r.status, r.body)
	}
	if r := serve(ops, httptest.NewRequest(http.MethodGet, "/livez", nil)); r.status != http.StatusOK {
		t.Errorf("/livez while not ready: got %d %s, want 200", r.status, r.body)
	}
}

// Without a profiler (RESOUND_PPROF off) or metrics handler, those routes
// are 404 like any unknown path.
func TestOpsWithoutHandlers(t *testing.T) {
	ops := httpapi.NewOps(httpapi.OpsOptions{})
	for _, path := range []string{"/metrics", "/debug/pprof/"} {
		r := serve(ops, httptest.NewRequest(http.MethodGet, path, nil))
		checkJSON(t, r)
		if r.status != http.StatusNotFound {
			t.Errorf("GET %s: got %d %s, want 404", path, r.status, r.body)
		}
	}
	if r := serve(ops, httptest.NewRequest(http.MethodHead, "/up", nil)); r.status != http.StatusOK {
		t.Errorf("HEAD /up with no Ready: got %d, want 200", r.status)
	}
}

// The public API never serves the operations routes, with or without a
// path prefix, but keeps the probes load balancers need.
func TestPublicAPIHasNoOpsRoutes(t *testing.T) {
	for _, prefix := range []string{"", "/reverb"} {
		api := newAPI(t, &fakePublisher{}, func(o *httpapi.Options) { o.PathPrefix = prefix })
		for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/cmdline"} {
			r := serve(api, httptest.NewRequest(http.MethodGet, prefix+path, nil))
			checkJSON(t, r)
			if r.status != http.StatusNotFound {
				t.Errorf("GET %s%s: got %d %s, want 404", prefix, path, r.status, r.body)
			}
		}
		for _, path := range []string{"/up", "/livez"} {
			if r := serve(api, httptest.NewRequest(http.MethodGet, prefix+path, nil)); r.status != http.StatusOK {
				t.Errorf("GET %s%s: got %d %s, want 200", prefix, path, r.status, r.body)
			}
		}
	}
}
