package multiprocess

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// Resound on a real 3-node NATS cluster with RESOUND_NATS_REPLICAS=3, as
// the Compose file and the Kubernetes manifests run it: every process
// gets all three URLs.

// clusterStartTimeout bounds the start of Resound processes launched all
// at once on a fresh cluster: every one of them creates the streams and
// buckets at the same moment, each a proposal to the meta leader and an
// election of its own.
const clusterStartTimeout = 60 * time.Second

// workerProc is a worker process serving /up and /metrics.
type workerProc struct {
	*proc
	metricsPort int
}

// resoundSet is gateways and workers on one NATS.
type resoundSet struct {
	gateways []*gatewayProc
	workers  []*workerProc
}

// startResoundAtOnce launches the workers and gateways all at once, then
// waits until every one answers GET /up with 200: the gateways once they
// listen, the workers once their streams, buckets and consumers exist.
func startResoundAtOnce(t *testing.T, natsURL string, gateways, workers int, env ...string) *resoundSet {
	t.Helper()
	base := append(append(appEnv(), "NATS_URL="+natsURL), env...)
	set := &resoundSet{}
	for i := range workers {
		port := freePort(t)
		p := startProc(t, fmt.Sprintf("worker-%d", i), "worker", append(base,
			"RESOUND_WORKERS=2", "REVERB_SERVER_HOST=127.0.0.1", "RESOUND_METRICS_PORT="+strconv.Itoa(port)))
		set.workers = append(set.workers, &workerProc{proc: p, metricsPort: port})
	}
	ports := make([]int, gateways)
	procs := make([]*proc, gateways)
	for i := range procs {
		ports[i] = freePort(t)
		procs[i] = launchGateway(t, fmt.Sprintf("gateway-%d", i), base, ports[i])
	}
	up := func(p *proc, port int) error {
		hc := &http.Client{Timeout: 2 * time.Second}
		return poll(p, clusterStartTimeout, "GET /up 200 from "+p.name, func() bool {
			resp, err := hc.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/up")
			if err != nil {
				return false
			}
			_ = resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
	for i, p := range procs {
		if err := up(p, ports[i]); err != nil {
			t.Fatal(err)
		}
		g := &gatewayProc{proc: p, port: ports[i], addr: "127.0.0.1:" + strconv.Itoa(ports[i])}
		g.api = newAPI(g.addr, appID, appKey, secret)
		set.gateways = append(set.gateways, g)
	}
	for _, w := range set.workers {
		if err := up(w.proc, w.metricsPort); err != nil {
			t.Fatal(err)
		}
	}
	return set
}

// stop stops every process with SIGTERM and checks each exited cleanly.
func (s *resoundSet) stop(t *testing.T) {
	t.Helper()
	for _, g := range s.gateways {
		if code := g.stop(t); code != 0 {
			t.Errorf("%s exited %d", g.name, code)
		}
	}
	for _, w := range s.workers {
		if code := w.stop(t); code != 0 {
			t.Errorf("%s exited %d", w.name, code)
		}
	}
}

// cluster is set as startLoadgen takes it.
func (s *resoundSet) cluster(natsURL string) *cluster {
	c := &cluster{natsURL: natsURL, gateways: s.gateways}
	for _, w := range s.workers {
		c.workers = append(c.workers, w.proc)
	}
	return c
}

var jobsOK = regexp.MustCompile(`(?m)^resound_jobs_total\{result="ok"\} (\d+)`)

// jobsDone is how many jobs the worker has worked, from its /metrics.
func (w *workerProc) jobsDone() int {
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(w.metricsPort) + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := jobsOK.FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// expectDelivery checks that set delivers: a client on every gateway
// subscribes to channels, and ticks triggered through every gateway's
// API reach all of them, in order, until every worker has worked some of
// them (the partitions are shared out once the workers see each other).
func expectDelivery(t *testing.T, set *resoundSet, run string) {
	t.Helper()
	clients := make([]*pushertest.Client, len(set.gateways))
	for i, g := range set.gateways {
		clients[i] = pushertest.Connect(t, g.addr, appKey)
		// Gone before the gateways stop, which need not drain them.
		defer clients[i].Close()
	}
	deadline := time.Now().Add(clusterStartTimeout)
	for k := 0; ; k++ {
		ch := run + "-" + strconv.Itoa(k)
		for _, c := range clients {
			c.Subscribe(ch)
		}
		triggerTicks(t, set.gateways[k%len(set.gateways)].api, ch, 0, 3)
		for _, c := range clients {
			expectTicks(t, c, ch, 0, 3)
			// Each channel once: a worker slow to take its lanes must
			// not run the connections into their channel limit.
			c.SendJSON(map[string]any{"event": protocol.EventUnsubscribe, "data": map[string]any{"channel": ch}})
		}
		idle := 0
		for _, w := range set.workers {
			if w.jobsDone() == 0 {
				idle++
			}
		}
		if idle == 0 && k >= 7 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d workers worked no job after %d channels", idle, len(set.workers), k+1)
		}
	}
}

// expectReplicated checks that the streams Resound made on the cluster
// have a leader and three replicas.
func expectReplicated(t *testing.T, nc *natsCluster) {
	t.Helper()
	var j struct {
		Accounts []struct {
			Streams []struct {
				Name   string `json:"name"`
				Config struct {
					Replicas int `json:"num_replicas"`
				} `json:"config"`
				Cluster *struct {
					Leader string `json:"leader"`
				} `json:"cluster"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	if err := nc.nodes[0].get("/jsz?streams=true&config=true", &j); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"RESOUND_JOBS": true, "RESOUND_DEAD_LETTERS": true, "KV_RESOUND_GATEWAYS": true, "KV_RESOUND_WORKERS": true,
		"KV_RESOUND_PRESENCE": true, "KV_RESOUND_USERS": true, "KV_RESOUND_COUNTS": true, "KV_RESOUND_CACHE": true, "RESOUND_HISTORY": true}
	for _, a := range j.Accounts {
		for _, s := range a.Streams {
			if s.Config.Replicas != 3 || s.Cluster == nil || s.Cluster.Leader == "" {
				t.Errorf("stream %s: %d replicas, cluster %+v", s.Name, s.Config.Replicas, s.Cluster)
			}
			delete(want, s.Name)
		}
	}
	if len(want) > 0 {
		t.Errorf("streams missing on %s: %v", nc.nodes[0].name, want)
	}
}

// Two gateways and two workers started at the same moment on a fresh
// 3-node cluster all come up and deliver; stopped and started again, all
// at once, on the cluster they made, they come up again.
func TestFreshNATSClusterStart(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	nc := startNATSCluster(t)
	set := startResoundAtOnce(t, nc.urls(), 2, 2, replicasEnv)
	expectReplicated(t, nc)
	expectDelivery(t, set, "fresh")
	set.stop(t)

	set = startResoundAtOnce(t, nc.urls(), 2, 2, replicasEnv)
	expectDelivery(t, set, "again")
	for _, p := range append(set.gateways[0].logMessages("warn"), set.workers[0].logMessages("warn")...) {
		t.Logf("warning: %s", p)
	}
}

// One NATS node killed with SIGKILL under load, and later restarted: the
// cluster elects new leaders for what the node led, processes connected
// to it reconnect to another, and every event the API accepted (answered
// 200) reaches every subscriber exactly once, in order, every connection
// staying subscribed: a gateway whose link broke catches up from
// RESOUND_HISTORY. The API may answer 503 while the job stream has no
// leader; loadgen then sends the event again, and if the failed request
// was stored after all, that event arrives twice: the producer's
// duplicate, counted apart (expectExact).
func TestNATSNodeKilledUnderLoad(t *testing.T) {
	alone(t) // its election is slower on a busier machine (see "Running side by side" in procs_test.go)
	nc := startNATSCluster(t)
	set := startResoundAtOnce(t, nc.urls(), 2, 2, replicasEnv)
	c := set.cluster(nc.urls())

	// 24 connections over 8 channels, 12 on each gateway: every channel
	// has subscribers on both. 300 events/s for 15 s.
	const conns, channels, events = 24, 8, 4500
	lg := startLoadgen(t, c, c.gateways[0], "nodekill", "-conns", strconv.Itoa(conns), "-channels", strconv.Itoa(channels),
		"-rate", "300", "-events", strconv.Itoa(events), "-drain", "20s")
	lg.waitSent(t, events/4)

	// The victim: a node a gateway is connected to, made the job stream's
	// leader first. The worst case: the API cannot store jobs until
	// another node leads the stream, and the gateway misses deliveries
	// until it is back on another node.
	victim := -1
	for i := range nc.nodes {
		conns := nc.clients(i)
		t.Logf("%s: clients %v", nc.nodes[i].name, conns)
		if conns["resound-gateway"] > 0 && victim < 0 {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatal("no node holds a gateway's connection")
	}
	nc.moveStreamLeader("RESOUND_JOBS", victim)
	t.Logf("killing %s, the job stream's leader (meta leader: %d, history leader: %d)",
		nc.nodes[victim].name, nc.metaLeader(), nc.streamLeader("RESOUND_HISTORY"))
	nc.kill(victim)
	killedAt := lg.progress()
	if killedAt.EventsSent >= events {
		t.Fatalf("the load was over (%d events sent) before the node was killed", killedAt.EventsSent)
	}

	// Restart the node once the API accepts events again, well before
	// the load ends.
	lg.waitSent(t, killedAt.EventsSent+events/8)
	t.Logf("job stream leader now: %d; restarting %s", nc.streamLeader("RESOUND_JOBS"), nc.nodes[victim].name)
	nc.restart(victim)

	s := lg.summary(t)
	f := s.Fanout
	t.Logf("sent %d events in %d requests, request failures %v; deliveries %d of %d expected: missing %d, duplicates %d (and %d of events sent again after a failed request), out of order %d",
		f.EventsSent, f.Requests, f.RequestFailures, f.Deliveries, f.Expected, f.Missing, f.Duplicates, f.DuplicatesResent, f.OutOfOrder)
	expectExact(t, s, conns, events, conns/channels)
	for _, p := range append(append([]*proc{}, c.workers...), c.gateways[0].proc, c.gateways[1].proc) {
		if p.exited() {
			t.Errorf("%s exited", p.name)
		}
	}
}
