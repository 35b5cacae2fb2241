package multiprocess

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/loadgen"
	"github.com/resoundhq/resound/internal/tcpproxy"
)

// The link tests: a process reaches nats-server only through a TCP proxy
// (internal/tcpproxy) that the test cuts under load, resetting every
// connection and refusing new ones, and restores on the same port a few
// seconds later. Deliveries are core NATS: what a gateway misses while its
// link is down is not redelivered by NATS, so the gateway must catch up
// from RESOUND_HISTORY (issue 10).

// startProxy starts a proxy to the nats-server at natsURL and returns it
// with the NATS URL that goes through it.
func startProxy(t *testing.T, natsURL string) (*tcpproxy.Proxy, string) {
	t.Helper()
	p, err := tcpproxy.Start("127.0.0.1:0", strings.TrimPrefix(natsURL, "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p, "nats://" + p.Addr()
}

// cutFor cuts the proxy's link, keeps it down for d, and restores it.
func cutFor(t *testing.T, p *tcpproxy.Proxy, d time.Duration) {
	t.Helper()
	before := p.Stats()
	if before.Open == 0 {
		t.Fatalf("nothing goes through the proxy to cut (%v)", before)
	}
	p.Cut()
	t.Logf("link cut: %d connections reset", before.Open)
	time.Sleep(d) // the fault's length, not an assertion
	if err := p.Restore(); err != nil {
		t.Fatal(err)
	}
}

// waitReconnected waits until what went through the proxy before the cut
// has come back through it: at least as many connections open as before
// the cut, all of them accepted since.
func waitReconnected(t *testing.T, p *tcpproxy.Proxy, open int, acceptedBefore int64) {
	t.Helper()
	waitFor(t, nil, startTimeout, "the connections back through the proxy", func() bool {
		s := p.Stats()
		return s.Open >= open && s.Accepted-acceptedBefore >= int64(open)
	})
}

// opsEnv serves a gateway's /metrics on a free port; metric reads it.
func opsEnv(t *testing.T) (env []string, addr string) {
	addr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	return []string{"RESOUND_OPS_ADDR=" + addr}, addr
}

// metric sums the samples of a metric on the gateway whose ops address
// is addr that carry every label given (`result="ok"`); -1 if there is
// none.
func metric(t *testing.T, addr, name string, labels ...string) float64 {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	sum, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		for _, l := range labels {
			if !strings.Contains(line[:sp], l) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return -1
	}
	return sum
}

// expectLetGo waits until the gateway whose ops address is addr holds no
// client connection: loadgen has exited, so every socket it had is closed,
// those the gateway closed itself (4200) among them.
func expectLetGo(t *testing.T, addr string) {
	t.Helper()
	var conns, subs float64
	if poll(nil, 10*time.Second, "no connection left", func() bool {
		conns, subs = metric(t, addr, "resound_connections"), metric(t, addr, "resound_subscriptions")
		return conns <= 0 && subs <= 0
	}) != nil {
		t.Errorf("gateway 2 still holds %v connections and %v subscriptions after loadgen closed them all", conns, subs)
	}
}

// logSummaryOnFailure prints loadgen's summary (without its histograms)
// if the test failed.
func logSummaryOnFailure(t *testing.T, s *loadgen.Summary) {
	t.Helper()
	if !t.Failed() {
		return
	}
	c := *s
	c.Hist = loadgen.Hists{}
	b, _ := json.Marshal(c)
	t.Logf("loadgen summary: %s", b)
}

// logNATSLinks prints what the process logged about its NATS links and
// catching up, if the test failed.
func logNATSLinks(t *testing.T, p *proc) {
	t.Helper()
	if !t.Failed() {
		return
	}
	var lines []string
	for _, line := range strings.Split(p.output(), "\n") {
		if strings.Contains(line, "NATS") || strings.Contains(line, "catch") || strings.Contains(line, "history") ||
			strings.Contains(line, "heartbeat") || strings.Contains(line, "reconnect") {
			lines = append(lines, line)
		}
	}
	if len(lines) > 30 {
		lines = append(lines[:10], append([]string{"..."}, lines[len(lines)-20:]...)...)
	}
	t.Logf("%s on its NATS links:\n%s", p.name, strings.Join(lines, "\n"))
}

// linkCutCluster is nats-server, two gateways and one worker, where
// gateway 2 (index 1) reaches NATS through a proxy and serves its metrics.
type linkCutCluster struct {
	*cluster
	proxy   *tcpproxy.Proxy
	opsAddr string // gateway 2's
}

func startLinkCutCluster(t *testing.T, env ...string) *linkCutCluster {
	t.Helper()
	natsURL, _ := startNATS(t)
	proxy, viaProxy := startProxy(t, natsURL)
	ops, opsAddr := opsEnv(t)
	c := startCluster(t, clusterSpec{gateways: 2, workers: 1, natsURL: natsURL, workerEnv: env,
		gatewayEnv: func(i int) []string {
			if i == 1 {
				return append(append([]string{"NATS_URL=" + viaProxy}, ops...), env...)
			}
			return env
		}})
	return &linkCutCluster{cluster: c, proxy: proxy, opsAddr: opsAddr}
}

// Gateway 2's link to NATS cut for 8 s under a steady fan-out over both
// gateways (the load of issue 10: 2,000 sockets, 31 channels, 150
// events/s, triggered on gateway 1). Within RESOUND_HISTORY_TTL the
// gateway catches up: its clients stay connected and get every event
// published meanwhile, in order, exactly once, before newer ones.
func TestGatewayLinkCut(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	lc := startLinkCutCluster(t)
	g2 := lc.gateways[1]
	// 64 subscribers a channel, 32 on each gateway; 56 events a channel,
	// 11.6 s at 150/s: 1 s before the cut, 8 s of cut, 2.6 s after.
	const conns, channels, events, cut = 64 * 31, 31, 56 * 31, 8 * time.Second
	lg := startLoadgen(t, lc.cluster, lc.gateways[0], "linkcut", "-reconnect", "-conns", strconv.Itoa(conns),
		"-channels", strconv.Itoa(channels), "-rate", "150", "-events", strconv.Itoa(events))
	lg.waitSent(t, 150)
	before := lc.proxy.Stats()
	cutFor(t, lc.proxy, cut)
	if p := lg.progress(); p.EventsSent >= events {
		t.Fatalf("the load was over (%d events sent) before the link was back", p.EventsSent)
	}
	waitReconnected(t, lc.proxy, before.Open, before.Accepted)

	s := lg.summary(t)
	defer logSummaryOnFailure(t, s)
	defer logNATSLinks(t, g2.proc)
	expectExact(t, s, conns, events, conns/channels)
	if s.Conns.Dropped != 0 || s.Conns.Reconnects != 0 || len(s.Conns.Failures) != 0 || len(s.Fanout.RequestFailures) != 0 {
		t.Errorf("dropped %d, reconnects %d, failures %v, request failures %v; gateway 2's clients must stay connected",
			s.Conns.Dropped, s.Conns.Reconnects, s.Conns.Failures, s.Fanout.RequestFailures)
	}
	expectLetGo(t, lc.opsAddr)
	if ok := metric(t, lc.opsAddr, "resound_catchups_total", `result="ok"`); ok < 1 {
		t.Errorf(`gateway 2's resound_catchups_total{result="ok"} is %v, want at least 1`, ok)
	}
	t.Logf("%d deliveries of %d expected, missing %d; gateway 2 replayed %v; proxy: %v",
		s.Fanout.Deliveries, s.Fanout.Expected, s.Fanout.Missing,
		metric(t, lc.opsAddr, "resound_catchup_replayed_total"), lc.proxy.Stats())
}

// Gateway 2's link cut for longer than RESOUND_HISTORY_TTL: what it
// missed is partly gone from the history, so it closes the affected
// subscribers with 4200 ("reconnect now"); loadgen's clients (with
// -reconnect) come back on gateway 1 and resubscribe. What was sent while
// they were away is their gap, counted apart; nothing sent after they
// resubscribed is missing.
func TestGatewayLinkCutPastHistory(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	// The gateway TTL is longer than the cut, so that only the history
	// window decides: nobody sweeps gateway 2 meanwhile.
	lc := startLinkCutCluster(t, "RESOUND_HISTORY_TTL=10", "RESOUND_GATEWAY_TTL=60")
	g2 := lc.gateways[1]
	// 10 subscribers a channel, 5 on each gateway; 61 events a channel,
	// 19 s at 100/s: 1 s before the cut, 15 s of cut, 3 s after.
	const conns, channels, events, cut = 10 * 31, 31, 61 * 31, 15 * time.Second
	const onG2 = conns / 2
	lg := startLoadgen(t, lc.cluster, lc.gateways[0], "pasthistory", "-reconnect", "-conns", strconv.Itoa(conns),
		"-channels", strconv.Itoa(channels), "-rate", "100", "-events", strconv.Itoa(events))
	lg.waitSent(t, 100)
	cutFor(t, lc.proxy, cut)
	// Some events must be sent after gateway 2's clients are back, or
	// "nothing after they resubscribed is missing" says nothing.
	// (If they never are, the summary still says what they missed.)
	if err := poll(lg.proc, lgSendBound, "gateway 2's clients told to reconnect, and back", func() bool {
		return lg.progress().Reconnects >= onG2
	}); err != nil {
		t.Error(err)
	} else if p := lg.progress(); p.EventsSent >= events {
		t.Errorf("the load was over (%d events sent) before gateway 2's clients were back", p.EventsSent)
	}

	s := lg.summary(t)
	defer logSummaryOnFailure(t, s)
	defer logNATSLinks(t, g2.proc)
	expectExact(t, s, conns, events, conns/channels)
	for kind := range s.Conns.Failures {
		if kind != "pusher_error_4200" && kind != "server_close_4200" {
			t.Errorf("failure %s ×%d; gateway 2's clients must be closed with 4200", kind, s.Conns.Failures[kind])
		}
	}
	if s.Conns.Dropped != onG2 || s.Conns.Reconnects != onG2 || s.Conns.Failures["server_close_4200"] != onG2 ||
		len(s.Fanout.RequestFailures) != 0 {
		t.Errorf("dropped %d, reconnects %d, failures %v, request failures %v; want gateway 2's %d clients closed with 4200 and back",
			s.Conns.Dropped, s.Conns.Reconnects, s.Conns.Failures, s.Fanout.RequestFailures, onG2)
	}
	if s.Fanout.Gap == 0 {
		t.Error("no gap: the clients closed with 4200 were not away at all")
	}
	expectLetGo(t, lc.opsAddr)
	if n := metric(t, lc.opsAddr, "resound_catchups_total", `result="expired"`); n < 1 {
		t.Errorf(`gateway 2's resound_catchups_total{result="expired"} is %v, want at least 1`, n)
	}
	t.Logf("gap: %d events sent while gateway 2's clients were away, %d of them arrived anyway; %d deliveries, missing %d",
		s.Fanout.Gap, s.Fanout.GapReceived, s.Fanout.Deliveries, s.Fanout.Missing)
}

// The worker's link to NATS cut for 8 s under load: jobs wait in the
// stream while it is away (the API still answers 200), and every event
// the API acknowledged reaches every subscriber exactly once, in order,
// whatever the worker had fetched, published or acknowledged when its
// connection was reset.
func TestWorkerLinkCut(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	natsURL, _ := startNATS(t)
	proxy, viaProxy := startProxy(t, natsURL)
	c := startCluster(t, clusterSpec{gateways: 2, workers: 1, natsURL: natsURL, workerEnv: []string{"NATS_URL=" + viaProxy}})
	// 20 subscribers a channel, 10 on each gateway; 55 events a channel,
	// 11.4 s at 150/s: 1 s before the cut, 8 s of cut, 2.4 s after.
	const conns, channels, events, cut = 20 * 31, 31, 55 * 31, 8 * time.Second
	lg := startLoadgen(t, c, c.gateways[0], "workercut", "-conns", strconv.Itoa(conns),
		"-channels", strconv.Itoa(channels), "-rate", "150", "-events", strconv.Itoa(events))
	lg.waitSent(t, 150)
	before := proxy.Stats()
	cutFor(t, proxy, cut)
	if p := lg.progress(); p.EventsSent >= events {
		t.Fatalf("the load was over (%d events sent) before the link was back", p.EventsSent)
	}
	waitReconnected(t, proxy, before.Open, before.Accepted)

	s := lg.summary(t)
	defer logSummaryOnFailure(t, s)
	expectExact(t, s, conns, events, conns/channels)
	if s.Conns.Dropped != 0 || len(s.Conns.Failures) != 0 || len(s.Fanout.RequestFailures) != 0 {
		t.Errorf("dropped %d, failures %v, request failures %v", s.Conns.Dropped, s.Conns.Failures, s.Fanout.RequestFailures)
	}
	if c.workers[0].exited() {
		t.Fatal("the worker exited")
	}
	t.Logf("%d deliveries of %d expected, missing %d, duplicates %d, out of order %d; proxy: %v",
		s.Fanout.Deliveries, s.Fanout.Expected, s.Fanout.Missing, s.Fanout.Duplicates, s.Fanout.OutOfOrder, proxy.Stats())
}

// signal sends sig to p.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
}
