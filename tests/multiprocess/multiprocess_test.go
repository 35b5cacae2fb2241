package multiprocess

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/natsembed/natstest"
	"github.com/resoundhq/resound/internal/queue"
	"github.com/resoundhq/resound/pkg/pushertest"
	"github.com/resoundhq/resound/protocol"
)

// An event triggered through one gateway's HTTP API reaches subscribers on
// every gateway, and a channel's events keep their order across processes.
func TestEventCrossesGateways(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	nurl, _ := startNATS(t)
	a := startGateway(t, "gateway-a", nurl, 0)
	b := startGateway(t, "gateway-b", nurl, 0)
	startWorker(t, "worker", nurl)

	ca := pushertest.Connect(t, a.addr, appKey)
	cb := pushertest.Connect(t, b.addr, appKey)
	ca.Subscribe("news")
	cb.Subscribe("news")
	mustOK(t, a.api.Trigger([]string{"news"}, `App\Events\Posted`, `{"id":7,"note":"<b>&"}`, ""))
	for _, c := range []*pushertest.Client{cb, ca} {
		m := c.Expect(`App\Events\Posted`)
		if m.Channel != "news" || m.DataString() != `{"id":7,"note":"<b>&"}` {
			t.Fatalf("got %s", m.Raw)
		}
	}

	seq := pushertest.Connect(t, b.addr, appKey)
	seq.Subscribe("seq")
	const total = 200
	triggerTicks(t, a.api, "seq", 0, total)
	mustOK(t, a.api.Trigger([]string{"seq"}, "done", "end", ""))
	expectTicks(t, seq, "seq", 0, total)
	// A duplicate of any tick would come before this.
	seq.Expect("done")
}

// socket_id excludes the sender's connection even when it sits on another
// gateway than the one the API call went to.
func TestSocketIDExcludedAcrossGateways(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	nurl, _ := startNATS(t)
	a := startGateway(t, "gateway-a", nurl, 0)
	b := startGateway(t, "gateway-b", nurl, 0)
	startWorker(t, "worker", nurl)

	ca := pushertest.Connect(t, a.addr, appKey)
	cb := pushertest.Connect(t, b.addr, appKey)
	ca.Subscribe("room")
	cb.Subscribe("room")
	mustOK(t, b.api.Trigger([]string{"room"}, "first", "1", ca.SocketID))
	mustOK(t, b.api.Trigger([]string{"room"}, "second", "2", ""))
	cb.Expect("first")
	cb.Expect("second")
	ca.Expect("second") // "first" would have come before it
}

// The gateway does not deliver on its own: with no worker, jobs wait in
// JetStream (the API still answers 200) and a worker started later, or
// after another was killed, delivers them all in order.
func TestJobsWaitForAWorker(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	nurl, _ := startNATS(t)
	g := startGateway(t, "gateway", nurl, 0)
	c := pushertest.Connect(t, g.addr, appKey)
	c.Subscribe("durable")

	js := natstest.Dial(t, nurl)
	triggerTicks(t, g.api, "durable", 0, 5)
	c.ExpectSilence(time.Second)
	if got := jobs(t, js); got != 5 {
		t.Fatalf("stream holds %d jobs with no worker, want 5", got)
	}

	w1 := startWorker(t, "worker-1", nurl)
	expectTicks(t, c, "durable", 0, 5)
	waitFor(t, w1, startTimeout, "an empty job stream", func() bool { return jobs(t, js) == 0 })

	w1.kill(t)
	triggerTicks(t, g.api, "durable", 5, 10)
	c.ExpectSilence(time.Second)

	startWorker(t, "worker-2", nurl)
	expectTicks(t, c, "durable", 5, 10)
	mustOK(t, g.api.Trigger([]string{"durable"}, "done", "end", ""))
	c.Expect("done") // no duplicate came first
}

// Two worker processes on one stream share its consumer, and a gateway
// that is stopped and started again on the same port picks up where it
// left off: nothing is lost, duplicated or left in the stream.
func TestTwoWorkersAndGatewayRestart(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	nurl, mon := startNATS(t)
	g := startGateway(t, "gateway", nurl, 0)
	w1 := launchWorker(t, "worker-1", nurl)
	w2 := launchWorker(t, "worker-2", nurl)
	w1.waitLog(t, workerReady)
	w2.waitLog(t, workerReady)

	c := pushertest.Connect(t, g.addr, appKey)
	c.Subscribe("twice")
	const total = 100
	triggerTicks(t, g.api, "twice", 0, total)
	expectEachOnce(t, c, "twice", total)

	js := natstest.Dial(t, nurl)
	waitFor(t, nil, startTimeout, "an empty job stream", func() bool { return jobs(t, js) == 0 })
	s := jetStream(t, mon).stream(t)
	if s.Name != "RESOUND_JOBS" || len(s.Consumers) != 8 {
		t.Fatalf("stream after two workers: %+v", s)
	}
	for _, c := range s.Consumers {
		if !strings.HasPrefix(c.Name, "resound-workers-") || c.NumRedelivered != 0 || c.NumAckPending != 0 {
			t.Fatalf("partition consumer after two workers: %+v", c)
		}
	}

	// Restart the gateway on its port. Its clients are closed with 4200
	// (reconnect), and it exits 0.
	port := g.port
	if code := g.stop(t); code != 0 {
		t.Fatalf("gateway exited %d on SIGTERM, want 0", code)
	}
	expectCloseCode(t, c, protocol.CodeReconnect)
	g2 := startGateway(t, "gateway-restarted", nurl, port)
	c2 := pushertest.Connect(t, g2.addr, appKey)
	c2.Subscribe("twice")
	triggerTicks(t, g2.api, "twice", 0, total)
	expectEachOnce(t, c2, "twice", total)

	for _, w := range []*proc{w1, w2} {
		if w.exited() {
			t.Fatalf("%s exited", w.name)
		}
		if errs := w.logMessages("error"); len(errs) > 0 {
			t.Fatalf("%s logged errors: %q", w.name, errs)
		}
	}
	if s := jetStream(t, mon).stream(t); len(s.Consumers) != 8 {
		t.Fatalf("after the restart the job stream has %d consumers, want 8 (one per partition)", len(s.Consumers))
	}
	// Workers stop cleanly on SIGTERM.
	for _, w := range []*proc{w1, w2} {
		if code := w.stop(t); code != 0 || !strings.Contains(w.output(), `"message":"worker stopped"`) {
			t.Fatalf("%s: exit %d on SIGTERM, want 0 and \"worker stopped\" logged", w.name, code)
		}
	}
}

func TestCommandLineAndBadSettings(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	out, _, code := runOnce(t, "gateway", nil, "--help")
	if code != 0 {
		t.Fatalf("gateway --help exited %d", code)
	}
	for _, name := range []string{"REVERB_APP_ID", "REVERB_SERVER_PORT", "NATS_URL", "RESOUND_DATA_DIR", "RESOUND_WORKERS", "RESOUND_PING_INTERVAL"} {
		if !strings.Contains(out, name) {
			t.Errorf("gateway --help does not name %s:\n%s", name, out)
		}
	}

	_, errOut, code := runOnce(t, "gateway", append(appEnv(), "REVERB_SERVER_PORT=abc", "REVERB_SERVER_HOST=127.0.0.1",
		"RESOUND_DATA_DIR="+t.TempDir()))
	if code != 2 || !strings.Contains(errOut, "REVERB_SERVER_PORT") {
		t.Errorf("gateway with REVERB_SERVER_PORT=abc: exit %d, stderr %q; want 2 naming REVERB_SERVER_PORT", code, errOut)
	}

	_, errOut, code = runOnce(t, "worker", appEnv())
	if code != 2 || !strings.Contains(errOut, "NATS_URL") {
		t.Errorf("worker without NATS_URL: exit %d, stderr %q; want 2 naming NATS_URL", code, errOut)
	}
}

// With no NATS_URL and no app, gateway is all of Resound in one process
// and makes a development app, kept in its data directory. Two such
// processes run side by side without sharing anything.
func TestAllInOneProcesses(t *testing.T) {
	sideBySide(t) // see "Running side by side" in procs_test.go
	one := startAllInOne(t, "all-in-one-1", 0, t.TempDir())
	two := startAllInOne(t, "all-in-one-2", 0, t.TempDir())
	if one.app == two.app {
		t.Fatalf("both processes made the app %+v", one.app)
	}

	c1 := pushertest.Connect(t, one.addr, one.app.key)
	c2 := pushertest.Connect(t, two.addr, two.app.key)
	c1.Subscribe("dev")
	c2.Subscribe("dev")
	mustOK(t, one.api.Trigger([]string{"dev"}, "hello", "from one", ""))
	mustOK(t, two.api.Trigger([]string{"dev"}, "hello", "from two", ""))
	if m := c1.Expect("hello"); m.DataString() != "from one" {
		t.Fatalf("client of one got %s", m.Raw)
	}
	if m := c2.Expect("hello"); m.DataString() != "from two" {
		t.Fatalf("client of two got %s", m.Raw)
	}

	// The processes do not know each other's app.
	x := pushertest.Dial(t, two.addr, "/app/"+one.app.key+"?protocol=7")
	x.ExpectError(protocol.CodeAppNotFound)
	x.ExpectClose(protocol.CodeAppNotFound)
	if r := two.api.Do(http.MethodPost, "/events", []byte(`{"name":"e","data":"d","channels":["dev"]}`), nil); r.Status != http.StatusOK {
		t.Fatalf("sanity: two's own API answered %d %s", r.Status, r.Body)
	}
	other := newAPI(two.addr, one.app.id, one.app.key, one.app.secret)
	if r := other.Trigger([]string{"dev"}, "e", "d", ""); r.Status != http.StatusNotFound {
		t.Fatalf("one's app on two: got %d %s, want 404", r.Status, r.Body)
	}
	c2.Expect("e")

	// Restarted on its data directory, a process keeps its app, and the
	// event still flows.
	if code := one.stop(t); code != 0 {
		t.Fatalf("all-in-one gateway exited %d on SIGTERM, want 0", code)
	}
	again := startAllInOne(t, "all-in-one-1-again", one.port, one.dataDir)
	if again.app != one.app {
		t.Fatalf("after a restart the app is %+v, want %+v", again.app, one.app)
	}
	c3 := pushertest.Connect(t, again.addr, again.app.key)
	c3.Subscribe("dev")
	mustOK(t, again.api.Trigger([]string{"dev"}, "hello", "again", ""))
	if m := c3.Expect("hello"); m.DataString() != "again" {
		t.Fatalf("got %s", m.Raw)
	}
}

type devApp struct{ id, key, secret string }

type allInOne struct {
	*proc
	port    int
	dataDir string
	addr    string
	app     devApp
	api     *pushertest.API
}

var devAppLine = regexp.MustCompile(`(?m)^\s*(REVERB_APP_ID|REVERB_APP_KEY|REVERB_APP_SECRET|REVERB_PORT)=(\S+)\s*$`)

// startAllInOne runs gateway with no NATS_URL and no app on port (0: a
// free one) and reads the development app it prints.
func startAllInOne(t *testing.T, name string, port int, dataDir string) *allInOne {
	t.Helper()
	p, port := startListening(t, name, []string{"RESOUND_DATA_DIR=" + dataDir, "RESOUND_LOG_FORMAT=json", "RESOUND_LOG_LEVEL=info"}, port)
	// The app is printed right after the ready line, so by now it is there
	// or on its way.
	p.waitLog(t, "Put these in your Laravel .env")
	vals := map[string]string{}
	for _, m := range devAppLine.FindAllStringSubmatch(p.output(), -1) {
		vals[m[1]] = m[2]
	}
	app := devApp{vals["REVERB_APP_ID"], vals["REVERB_APP_KEY"], vals["REVERB_APP_SECRET"]}
	if !regexp.MustCompile(`^[1-9][0-9]{5}$`).MatchString(app.id) || !regexp.MustCompile(`^[a-z]{20}$`).MatchString(app.key) ||
		!regexp.MustCompile(`^[a-z]{20}$`).MatchString(app.secret) || vals["REVERB_PORT"] != strconv.Itoa(port) {
		t.Fatalf("%s printed %v; want a six-digit id, 20-letter key and secret, and REVERB_PORT=%d", name, vals, port)
	}
	a := &allInOne{proc: p, port: port, dataDir: dataDir, addr: "127.0.0.1:" + strconv.Itoa(port), app: app}
	a.api = newAPI(a.addr, app.id, app.key, app.secret)
	return a
}

// expectEachOnce reads n "tick" events on channel and checks that they
// carry 0..n-1, each exactly once, in any order (two workers may finish
// jobs out of order), and that nothing else follows for a second.
func expectEachOnce(t *testing.T, c *pushertest.Client, channel string, n int) {
	t.Helper()
	seen := make(map[int]int, n)
	var order []int
	for range n {
		m := c.Expect("tick")
		i, err := strconv.Atoi(m.DataString())
		if m.Channel != channel || err != nil || i < 0 || i >= n {
			t.Fatalf("got %s", m.Raw)
		}
		seen[i]++
		order = append(order, i)
	}
	var dup []int
	for i, k := range seen {
		if k > 1 {
			dup = append(dup, i)
		}
	}
	sort.Ints(dup)
	if len(seen) != n || len(dup) > 0 {
		t.Fatalf("got %d distinct of %d events, duplicated %v", len(seen), n, dup)
	}
	c.ExpectSilence(time.Second)
	if !sort.IntsAreSorted(order) {
		t.Fatalf("events arrived out of trigger order: %v", order)
	}
}

// expectCloseCode reads until a close frame and checks its code. Unlike
// pushertest's ExpectClose it reports what came instead.
func expectCloseCode(t *testing.T, c *pushertest.Client, code int) {
	t.Helper()
	for {
		f, err := c.ReadFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("waiting for close %d: %v", code, err)
		}
		if f.OpCode != ws.OpClose {
			continue
		}
		if len(f.Payload) < 2 || int(binary.BigEndian.Uint16(f.Payload)) != code {
			t.Fatalf("close frame %q, want code %d", f.Payload, code)
		}
		return
	}
}

// jsz is the part of nats-server's /jsz?consumers=true the tests read.
type jsz struct {
	Streams   int `json:"streams"`
	Consumers int `json:"consumers"`
	Messages  int `json:"messages"`
	Accounts  []struct {
		Streams []jszStream `json:"stream_detail"`
	} `json:"account_details"`
}

type jszStream struct {
	Name  string `json:"name"`
	State struct {
		Messages int `json:"messages"`
	} `json:"state"`
	Consumers []struct {
		Name           string `json:"name"`
		NumAckPending  int    `json:"num_ack_pending"`
		NumRedelivered int    `json:"num_redelivered"`
	} `json:"consumer_detail"`
}

func jetStream(t *testing.T, monitorURL string) jsz {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(monitorURL + "/jsz?consumers=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var j jsz
	if err := json.NewDecoder(resp.Body).Decode(&j); err != nil {
		t.Fatalf("/jsz: %v", err)
	}
	return j
}

// jobs counts the jobs in the job stream: its messages without the
// anchor the workers keep in it (queue.Jobs).
func jobs(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, queue.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	n, err := queue.Jobs(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// stream is the job stream.
func (j jsz) stream(t *testing.T) jszStream {
	t.Helper()
	var names []string
	for _, a := range j.Accounts {
		for _, s := range a.Streams {
			if s.Name == "RESOUND_JOBS" {
				return s
			}
			names = append(names, s.Name)
		}
	}
	t.Fatalf("no RESOUND_JOBS stream among %v", names)
	return jszStream{}
}
