package node

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/config"
)

// get fetches a URL and returns its status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// With RESOUND_OPS_ADDR set, /metrics and the profiler are served there
// and only there; the public port keeps the probes.
func TestOpsAddrServesMetricsAndPprof(t *testing.T) {
	n, _ := startNode(t, func(s *config.Settings) { s.OpsAddr = "127.0.0.1:0"; s.Pprof = true })
	if n.OpsAddr() == nil {
		t.Fatal("OpsAddr() is nil with RESOUND_OPS_ADDR set")
	}
	ops := "http://" + n.OpsAddr().String()
	public := "http://" + n.Addr().String()

	status, body := get(t, ops+"/metrics")
	if status != http.StatusOK || !strings.Contains(body, "resound_connections") || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("ops /metrics: got %d, want 200 with the gateway's and Go's metrics:\n%.500s", status, body)
	}
	if status, body := get(t, ops+"/debug/pprof/"); status != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("ops /debug/pprof/: got %d %.200s, want the profiler's index", status, body)
	}
	if status, _ := get(t, ops+"/debug/pprof/cmdline"); status != http.StatusOK {
		t.Fatalf("ops /debug/pprof/cmdline: got %d", status)
	}
	for _, path := range []string{"/up", "/livez"} {
		for _, base := range []string{ops, public} {
			if status, body := get(t, base+path); status != http.StatusOK || body != `{"health":"OK"}` {
				t.Errorf("%s%s: got %d %s, want 200", base, path, status, body)
			}
		}
	}
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/cmdline"} {
		if status, body := get(t, public+path); status != http.StatusNotFound || strings.Contains(body, appID) {
			t.Errorf("public %s: got %d %.200s, want 404", path, status, body)
		}
	}

	// The ops listener stops with the node.
	addr := n.OpsAddr().String()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts after Close", addr)
	}
}

// Empty RESOUND_OPS_ADDR (the default): the operations endpoints are
// served nowhere, RESOUND_PPROF or not.
func TestNoOpsAddrServesNoMetrics(t *testing.T) {
	n, _ := startNode(t, func(s *config.Settings) { s.Pprof = true })
	if n.OpsAddr() != nil {
		t.Fatalf("OpsAddr() = %v with RESOUND_OPS_ADDR empty", n.OpsAddr())
	}
	public := "http://" + n.Addr().String()
	for _, path := range []string{"/metrics", "/debug/pprof/"} {
		if status, body := get(t, public+path); status != http.StatusNotFound {
			t.Errorf("public %s: got %d %.200s, want 404", path, status, body)
		}
	}
	if status, _ := get(t, public+"/up"); status != http.StatusOK {
		t.Errorf("public /up: got %d, want 200", status)
	}
}

// The profiler needs RESOUND_PPROF even on the operations address.
func TestOpsAddrWithoutPprof(t *testing.T) {
	n, _ := startNode(t, func(s *config.Settings) { s.OpsAddr = "127.0.0.1:0" })
	ops := "http://" + n.OpsAddr().String()
	if status, _ := get(t, ops+"/debug/pprof/"); status != http.StatusNotFound {
		t.Errorf("ops /debug/pprof/ without RESOUND_PPROF: got %d, want 404", status)
	}
	if status, _ := get(t, ops+"/metrics"); status != http.StatusOK {
		t.Errorf("ops /metrics: got %d, want 200", status)
	}
}

// An address that cannot be bound fails the start-up, and the message
// names the setting.
func TestOpsAddrBindFailureFailsStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	s := baseSettings(t)
	s.OpsAddr = taken.Addr().String()
	apps, err := config.NewApps([]config.App{{ID: appID, Key: appKey, Secret: secret}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := Start(ctx, Options{Config: &config.Config{Settings: s, Apps: apps}, Listener: ln,
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err == nil {
		_ = n.Close()
		t.Fatal("Start succeeded on an address already in use")
	}
	if !strings.Contains(err.Error(), "RESOUND_OPS_ADDR") {
		t.Fatalf("error %q does not name RESOUND_OPS_ADDR", err)
	}
}
