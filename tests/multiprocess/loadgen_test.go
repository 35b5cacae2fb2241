package multiprocess

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/loadgen"
)

// cluster is what the fault tests run against: one nats-server process,
// several gateway processes and several worker processes.
type cluster struct {
	natsURL  string
	gateways []*gatewayProc
	workers  []*proc
}

// clusterSpec says how many processes to start and with what settings
// beyond the test app's.
type clusterSpec struct {
	gateways, workers int
	natsURL           string               // "" starts a nats-server
	gatewayEnv        func(i int) []string // extra settings of gateway i (may be nil)
	workerEnv         []string             // extra settings of every worker
}

// startCluster starts the processes, all at once, and waits until every
// gateway answers GET /up and every worker has started.
func startCluster(t *testing.T, spec clusterSpec) *cluster {
	t.Helper()
	c := &cluster{natsURL: spec.natsURL}
	if c.natsURL == "" {
		c.natsURL, _ = startNATS(t)
	}
	for i := range spec.workers {
		w := startProc(t, fmt.Sprintf("worker-%d", i), "worker", append(append(appEnv(),
			"NATS_URL="+c.natsURL, "RESOUND_WORKERS=2", "RESOUND_METRICS_PORT=0"), spec.workerEnv...))
		c.workers = append(c.workers, w)
	}
	envOf := func(i int) []string {
		env := append(appEnv(), "NATS_URL="+c.natsURL)
		if spec.gatewayEnv != nil {
			env = append(env, spec.gatewayEnv(i)...)
		}
		return env
	}
	ports := make([]int, spec.gateways)
	procs := make([]*proc, spec.gateways)
	for i := range procs {
		ports[i] = freePort(t)
		procs[i] = launchGateway(t, fmt.Sprintf("gateway-%d", i), envOf(i), ports[i])
	}
	for i, p := range procs {
		for attempt := 1; ; attempt++ {
			err := awaitUp(p, ports[i])
			if err == nil {
				break
			}
			if !p.portTaken() || attempt == bindAttempts {
				t.Fatal(err)
			}
			ports[i] = freePort(t)
			p = launchGateway(t, fmt.Sprintf("gateway-%d", i), envOf(i), ports[i])
		}
		g := &gatewayProc{proc: p, port: ports[i], addr: "127.0.0.1:" + strconv.Itoa(ports[i])}
		g.api = newAPI(g.addr, appID, appKey, secret)
		c.gateways = append(c.gateways, g)
	}
	for _, w := range c.workers {
		w.waitLog(t, workerReady)
	}
	return c
}

// wsURLs is the -ws-urls of every gateway, in order.
func (c *cluster) wsURLs() string {
	var urls []string
	for _, g := range c.gateways {
		urls = append(urls, "http://"+g.addr)
	}
	return strings.Join(urls, ",")
}

// loadgenRun is a cmd/loadgen process: its summary goes to its own file,
// its JSON log lines (progress among them) to the log.
type loadgenRun struct {
	*proc
	summaryPath string
}

// Bounds for a loadgen run: every fault test's load is a few seconds of
// sending, then up to lgDrain for the deliveries a fault held back.
const (
	lgDrain     = 40 * time.Second
	lgRunBound  = 90 * time.Second // the whole process, set-up to exit
	lgProgress  = "100ms"
	lgSendBound = 30 * time.Second
)

// startLoadgen runs loadgen fanout against c: WebSockets spread over every
// gateway, API requests to the gateway api, channels named lg-<run>-<i>.
// args add to or override the defaults.
func startLoadgen(t *testing.T, c *cluster, api *gatewayProc, run string, args ...string) *loadgenRun {
	t.Helper()
	out := filepath.Join(t.TempDir(), "loadgen-"+run+".json")
	all := append([]string{"fanout",
		"-url", "http://" + api.addr, "-ws-urls", c.wsURLs(), "-run", run,
		"-json", "-progress", lgProgress, "-duration", lgSendBound.String(), "-drain", lgDrain.String(),
	}, args...)
	p := startProcOut(t, "loadgen-"+run, "loadgen", appEnv(), out, all...)
	return &loadgenRun{proc: p, summaryPath: out}
}

// lgProgressLine is what the tests read of loadgen's progress lines.
type lgProgressLine struct {
	Phase           string `json:"phase"`
	Subscribed      int64  `json:"subscribed"`
	Dropped         int64  `json:"dropped"`
	Reconnects      int64  `json:"reconnects"`
	Deliveries      int64  `json:"deliveries"`
	EventsSent      int64  `json:"events_sent"`
	RequestFailures int64  `json:"request_failures"`
}

// progress returns the last progress line so far (zero before the first).
func (l *loadgenRun) progress() lgProgressLine {
	var last lgProgressLine
	for _, line := range strings.Split(l.output(), "\n") {
		var p struct {
			lgProgressLine
			Message string `json:"message"`
		}
		if json.Unmarshal([]byte(line), &p) == nil && p.Message == "progress" {
			last = p.lgProgressLine
		}
	}
	return last
}

// waitSent waits until loadgen has had n events acknowledged. It fails
// the test if the load ends first: the fault would then come after it.
func (l *loadgenRun) waitSent(t *testing.T, n int64) lgProgressLine {
	t.Helper()
	var p lgProgressLine
	waitFor(t, l.proc, lgSendBound, fmt.Sprintf("%d events sent by loadgen", n), func() bool {
		p = l.progress()
		return p.EventsSent >= n
	})
	return p
}

// summary waits for loadgen to exit and returns its summary. Loadgen
// exits 1 when the run had errors; the summary says which.
func (l *loadgenRun) summary(t *testing.T) *loadgen.Summary {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(lgRunBound):
		t.Fatalf("loadgen still running after %v", lgRunBound)
	}
	s, err := loadgen.ReadSummaryFile(l.summaryPath)
	if err != nil {
		t.Fatalf("loadgen exited %d without a summary: %v", l.cmd.ProcessState.ExitCode(), err)
	}
	if code := l.cmd.ProcessState.ExitCode(); code != 0 || len(s.Errors) > 0 || s.Interrupted {
		t.Fatalf("loadgen exited %d, errors %q, interrupted %v", code, s.Errors, s.Interrupted)
	}
	return s
}

// expectExact checks the counts every fault test demands of a fan-out:
// all events sent, every connection subscribed at the end, and every
// expected delivery made exactly once, in order, with nothing else.
// subsPerChannel is how many connections each channel has.
func expectExact(t *testing.T, s *loadgen.Summary, conns, events, subsPerChannel int64) {
	t.Helper()
	f := s.Fanout
	if f == nil {
		t.Fatal("the summary has no fanout section")
	}
	c := s.Conns
	if c.Planned != conns || c.Established != conns || c.Subscribed != conns || c.Failed != 0 || f.Subscribers != conns {
		t.Errorf("connections: %+v, %d subscribed at the end; want all %d", c, f.Subscribers, conns)
	}
	if f.EventsSent != events {
		t.Errorf("events sent %d, want %d (request failures %v)", f.EventsSent, events, f.RequestFailures)
	}
	// An event whose request failed (a 503 while JetStream elected a
	// leader) was sent again, and the failed request may have been stored
	// all the same: the server promises once only for what it answered
	// 200, so those duplicates are counted apart, and bounded by the
	// failures. Any other duplicate is the server's, and fails the test.
	var failed int64
	for _, n := range f.RequestFailures {
		failed += n
	}
	perRequest := int64(1)
	if f.Requests > 0 {
		perRequest = (f.EventsSent + f.Requests - 1) / f.Requests
	}
	if f.DuplicatesResent > failed*perRequest*subsPerChannel {
		t.Errorf("%d duplicates of resent events, more than %d failed requests × %d events × %d subscribers could make",
			f.DuplicatesResent, failed, perRequest, subsPerChannel)
	}
	if f.Deliveries != f.Expected || f.Missing != 0 || f.Duplicates != 0 || f.OutOfOrder != 0 || f.Unexpected != 0 || f.Malformed != 0 {
		t.Errorf("deliveries %d of %d expected: missing %d, duplicates %d, out of order %d, unexpected %d, malformed %d",
			f.Deliveries, f.Expected, f.Missing, f.Duplicates, f.OutOfOrder, f.Unexpected, f.Malformed)
	}
	// Every connection's account covers every event of its channel: what
	// it expected, or what was sent while it was away.
	if f.Expected+f.Gap != events*subsPerChannel {
		t.Errorf("expected %d + gap %d = %d, want events × subscribers per channel = %d",
			f.Expected, f.Gap, f.Expected+f.Gap, events*subsPerChannel)
	}
	if s.LatencyMs == nil || int64(s.LatencyMs.Count) != f.Deliveries {
		t.Errorf("latency samples %+v, want one per delivery (%d)", s.LatencyMs, f.Deliveries)
	}
}
