package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/resoundhq/resound/internal/attack"
)

// The app every process serves. Not secrets: everything listens on
// loopback, for the run.
const (
	appID  = "777001"
	appKey = "soak-key"
	secret = "soak-secret"
	// maxConnections is the app's cluster-wide cap: well above what the
	// load and the attacks hold at once (about 1,000), so it never refuses
	// anyone, but set, so that every connection takes and gives back a
	// counted slot in RESOUND_COUNTS.
	maxConnections = 5000
)

// gatewaySettings are the bounds both gateways run with. They are
// tighter than the defaults where an attack of the loop must reach the
// bound to prove it holds, and otherwise the defaults, so that the soak
// measures the gateway as it ships.
var gatewaySettings = []string{
	"RESOUND_MAX_CONNECTIONS_PER_IP=250",     // connections_per_ip: the attack opens 260 from one address
	"RESOUND_MAX_CHANNELS_PER_CONNECTION=50", // channels_per_connection: the flood subscribes to 60
	"RESOUND_MAX_OUTBOUND=65536",             // outbound: slow readers are cut off after 64 KiB
	"RESOUND_HANDSHAKE_TIMEOUT=5",            // handshake_timeout: slowloris sockets are closed after 5 s
	"RESOUND_MAX_HANDSHAKES=100",             // handshakes: slowloris opens 120
	"RESOUND_MAX_HTTP_CONNECTIONS=200",       // http_connections: 210 idle keep-alive API connections
	"RESOUND_CACHE_TTL=60",                   // the cache bucket empties a minute after the load
	"RESOUND_DRAIN_WINDOW=0",                 // a stopping gateway closes its clients at once
	"RESOUND_LOG_FORMAT=json", "RESOUND_LOG_LEVEL=info", "RESOUND_PPROF=true",
}

// deployment is the scaled deployment under soak: one nats-server, one
// worker and two gateways, so that the shared-state buckets live in a
// server the soak can read from outside, and presence, users and counts
// are written by two gateways at once.
type deployment struct {
	nats     *proc
	natsURL  string
	worker   *proc
	workerMx string // host:port of the worker's /metrics
	gateways []*gatewayProc
	appsFile string
}

type gatewayProc struct {
	*proc
	addr    string // public: WebSocket and HTTP API
	opsAddr string // RESOUND_OPS_ADDR: /metrics, /debug/pprof
	target  attack.Target
}

func (c *deployment) procs() []*proc {
	var out []*proc
	for _, g := range c.gateways {
		if g != nil {
			out = append(out, g.proc)
		}
	}
	for _, p := range []*proc{c.worker, c.nats} {
		if p != nil {
			out = append(out, p)
		}
	}
	return out
}

// stop stops the gateways, then the worker, then NATS.
func (c *deployment) stop() []string {
	var killed []string
	for _, p := range c.procs() {
		if p.stop(stopGrace) {
			killed = append(killed, p.name)
		}
	}
	return killed
}

// exited lists the processes of the cluster that are no longer running.
func (c *deployment) exited() []string {
	var out []string
	for _, p := range c.procs() {
		if p.exited() {
			out = append(out, fmt.Sprintf("%s (exit code %d)", p.name, p.cmd.ProcessState.ExitCode()))
		}
	}
	return out
}

// startCluster starts nats-server, the worker and the gateways from the
// binaries in bin, with logs in logDir and data in work.
func startCluster(ctx context.Context, bin, logDir, work string, gateways int) (*deployment, error) {
	var pp ports
	c := &deployment{appsFile: filepath.Join(work, "apps.json")}
	apps := map[string]any{"apps": []map[string]any{{
		"app_id": appID, "key": appKey, "secret": secret,
		"max_connections": maxConnections, "subscription_count": true,
	}}}
	b, _ := json.Marshal(apps)
	if err := os.WriteFile(c.appsFile, b, 0o600); err != nil {
		return nil, err
	}

	var err error
	c.nats, err = startRetrying(ctx, "nats-server", func() (*proc, func() bool, error) {
		port, err1 := pp.free()
		mport, err2 := pp.free()
		if err := errors.Join(err1, err2); err != nil {
			return nil, nil, err
		}
		p, err := startProc("nats-server", filepath.Join(bin, "nats-server"), logDir, work, nil, "",
			"-js", "-sd", filepath.Join(work, "nats"), "-a", "127.0.0.1", "-p", itoa(port), "-m", itoa(mport))
		c.natsURL = "nats://127.0.0.1:" + itoa(port)
		return p, func() bool { ok, _ := httpOK("http://127.0.0.1:" + itoa(mport) + "/healthz"); return ok }, err
	})
	if err != nil {
		return c, err
	}
	common := []string{
		"NATS_URL=" + c.natsURL, "RESOUND_APPS_FILE=" + c.appsFile,
		"REVERB_SERVER_HOST=127.0.0.1", "RESOUND_LOG_FORMAT=json", "RESOUND_LOG_LEVEL=info",
		"RESOUND_CACHE_TTL=60",
	}
	c.worker, err = startRetrying(ctx, "worker", func() (*proc, func() bool, error) {
		port, err := pp.free()
		if err != nil {
			return nil, nil, err
		}
		c.workerMx = "127.0.0.1:" + itoa(port)
		p, err := startProc("worker", filepath.Join(bin, "worker"), logDir, work,
			append(common, "RESOUND_WORKERS=2", "RESOUND_METRICS_PORT="+itoa(port)), "")
		return p, func() bool { ok, _ := httpOK("http://" + c.workerMx + "/metrics"); return ok }, err
	})
	if err != nil {
		return c, err
	}
	for i := range gateways {
		name := fmt.Sprintf("gateway-%d", i+1)
		var g *gatewayProc
		_, err = startRetrying(ctx, name, func() (*proc, func() bool, error) {
			port, err1 := pp.free()
			ops, err2 := pp.free()
			if err := errors.Join(err1, err2); err != nil {
				return nil, nil, err
			}
			env := append(append([]string{}, common...), gatewaySettings...)
			env = append(env, "REVERB_SERVER_PORT="+itoa(port), "RESOUND_OPS_ADDR=127.0.0.1:"+itoa(ops))
			p, err := startProc(name, filepath.Join(bin, "gateway"), logDir, work, env, "")
			if err != nil {
				return nil, nil, err
			}
			addr := "127.0.0.1:" + itoa(port)
			g = &gatewayProc{proc: p, addr: addr, opsAddr: "127.0.0.1:" + itoa(ops),
				target: attack.Target{Addr: addr, AppID: appID, Key: appKey, Secret: secret}}
			return p, func() bool { return gatewayUp(addr) }, nil
		})
		if err != nil {
			return c, err
		}
		c.gateways = append(c.gateways, g)
	}
	return c, nil
}

// settingsLine is the gateways' non-default settings, for the report.
func settingsLine() string {
	var out []string
	for _, s := range gatewaySettings {
		if strings.HasPrefix(s, "RESOUND_LOG") || strings.HasPrefix(s, "RESOUND_PPROF") || strings.HasPrefix(s, "RESOUND_DRAIN") {
			continue
		}
		out = append(out, "`"+s+"`")
	}
	return strings.Join(out, ", ")
}

// pause waits d or until ctx ends; false when ctx ended.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
