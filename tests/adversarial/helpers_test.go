package adversarial

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/resoundhq/resound/internal/attack"
	"github.com/resoundhq/resound/protocol"
)

const mib = 1 << 20

// metrics scrapes the gateway's /metrics on its ops address.
func (g *gateway) metrics(t *testing.T) attack.Metrics {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := attack.Scrape(ctx, g.opsAddr)
	if err != nil {
		t.Fatalf("scraping /metrics on RESOUND_OPS_ADDR %s: %v", g.opsAddr, err)
	}
	return m
}

// procStats reads the gateway's RSS and descriptors from /proc.
func (g *gateway) procStats(t *testing.T) attack.Proc {
	t.Helper()
	p, err := attack.ReadProc(g.pid())
	if err != nil {
		t.Fatalf("reading /proc of the gateway: %v", err)
	}
	return p
}

// level is what the gateway holds before an attack.
type level struct {
	goroutines float64
	fds        int
	rss        int64
	scrape     attack.Metrics // for the growth of counters
}

func (g *gateway) level(t *testing.T) level {
	t.Helper()
	m := g.metrics(t)
	p := g.procStats(t)
	return level{goroutines: m.Sum("go_goroutines"), fds: p.FDs, rss: p.RSS, scrape: m}
}

// hits is how much resound_limit_hits_total{limit} grew since l.
func (g *gateway) hits(t *testing.T, l level, limit string) int {
	t.Helper()
	return int(g.metrics(t).LimitHits(limit) - l.scrape.LimitHits(limit))
}

// expectHits checks that limit was hit exactly want times since l.
func (g *gateway) expectHits(t *testing.T, l level, limit string, want int) {
	t.Helper()
	if got := g.hits(t, l, limit); got != want {
		t.Errorf("resound_limit_hits_total{limit=%q} grew by %d, want %d", limit, got, want)
	}
}

// settle waits until the gateway's goroutines and descriptors are back
// near their level before the attack, now that the attacker has closed
// its sockets. Nothing is timed: it waits for the condition, and fails
// only if it never comes.
func (g *gateway) settle(t *testing.T, before level) {
	t.Helper()
	var gor float64
	var fds int
	err := poll(g.proc, 30*time.Second, "goroutines and descriptors back to their level before the attack", func() bool {
		m, err := attack.Scrape(context.Background(), g.opsAddr)
		if err != nil {
			return false
		}
		p, err := attack.ReadProc(g.pid())
		if err != nil {
			return false
		}
		gor, fds = m.Sum("go_goroutines"), p.FDs
		// Slack for what the embedded JetStream and the runtime start on
		// their own; a leak per attacking socket is hundreds.
		return gor <= before.goroutines+50 && fds <= before.fds+20
	})
	if err != nil {
		t.Errorf("%v: %v goroutines (%v before), %d descriptors (%d before)", err, gor, before.goroutines, fds, before.fds)
		t.Logf("goroutines of the gateway:\n%s", g.goroutines())
	}
}

// goroutines is the gateway's goroutine profile, grouped by stack
// (RESOUND_PPROF serves it on the ops address), for a failure message.
func (g *gateway) goroutines() string {
	resp, err := harnessClient().Get("http://" + g.opsAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return string(b)
}

// alive checks that the gateway process runs and serves: a new client
// connects, subscribes and receives an event triggered through the API.
func (g *gateway) alive(t *testing.T) {
	t.Helper()
	if g.exited() {
		t.Fatalf("the gateway exited (code %d)", g.cmd.ProcessState.ExitCode())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := g.target.Connect(ctx, attack.DialOptions{Source: harnessIP})
	if err != nil {
		t.Fatalf("the gateway no longer accepts a client: %v", err)
	}
	defer c.Close()
	if err := c.Subscribe("alive-check", "", ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Await(protocol.EventSubscriptionSucceeded, "alive-check", 10*time.Second); err != nil {
		t.Fatalf("alive check: %v", err)
	}
	if r := g.api(harnessIP).Trigger([]string{"alive-check"}, "alive", "yes", ""); r.Status != http.StatusOK {
		t.Fatalf("alive check: trigger answered %d %s", r.Status, r.Body)
	}
	if _, _, err := c.Await("alive", "alive-check", 10*time.Second); err != nil {
		t.Fatalf("alive check: %v", err)
	}
}

// startBystander starts the bystander from bystanderIP: three clients on
// two channels, 50 events a second. finish stops and judges it.
func (g *gateway) startBystander(t *testing.T, o attack.BystanderOptions) *attack.Bystander {
	t.Helper()
	o.Target = g.target
	if o.Source == "" {
		o.Source = bystanderIP
	}
	b := attack.NewBystander(o)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatalf("starting the bystander: %v", err)
	}
	t.Cleanup(func() { b.Stop() })
	waitFor(t, g.proc, 30*time.Second, "the bystander's stream to flow", func() bool { return b.Accepted() >= streamFlowing })
	return b
}

// finishBystander stops the stream and checks that every client got every
// accepted event, once, in order.
func finishBystander(t *testing.T, b *attack.Bystander) {
	t.Helper()
	r := b.Stop()
	t.Log(r)
	if err := r.Err(); err != nil {
		t.Errorf("the bystander lost out: %v", err)
	}
}

// rssGrowth checks that the peak RSS seen by w stayed within limit of the
// level before the attack.
func rssGrowth(t *testing.T, before level, w *attack.RSSWatch, limit int64) {
	t.Helper()
	peak := w.Stop()
	growth := peak - before.rss
	t.Logf("RSS %.1f MiB before, peak %.1f MiB (+%.1f MiB)", float64(before.rss)/mib, float64(peak)/mib, float64(growth)/mib)
	if growth > limit {
		t.Errorf("RSS grew by %.1f MiB during the attack, bound %d MiB", float64(growth)/mib, limit/mib)
	}
}

// setup is the start of every attack test: a fresh gateway with settings,
// the bystander with its stream flowing, and the level before the attack.
func setup(t *testing.T, settings ...string) (*gateway, *attack.Bystander, level) {
	t.Helper()
	g := startGateway(t, settings...)
	b := g.startBystander(t, attack.BystanderOptions{})
	return g, b, g.level(t)
}

// Events the bystander's stream carries at least: the first before the
// attack starts, the rest by the time the test ends (a second at 50/s),
// so that even an attack over in a moment is judged on a real stream.
const (
	streamFlowing = 5
	streamLength  = 50
)

// finish is the end of every attack test: the bystander got everything,
// the gateway lives and serves, and what the attack made it hold is gone.
func finish(t *testing.T, g *gateway, b *attack.Bystander, before level) {
	t.Helper()
	waitFor(t, g.proc, 30*time.Second, "the bystander's stream to carry its events", func() bool { return b.Accepted() >= streamLength })
	finishBystander(t, b)
	g.alive(t)
	g.settle(t, before)
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// sockets is what ss says of the TCP connection whose client end is local
// ("127.0.0.2:41234"), both ends: queues, windows, retransmissions. It is
// for a failure message; without ss it says why not.
func sockets(local string) string {
	host, port, err := net.SplitHostPort(local)
	if err != nil {
		return err.Error()
	}
	out, err := exec.Command("ss", "-tnieomH", "( sport = :"+port+" or dport = :"+port+" ) and ( src "+host+" or dst "+host+" )").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("ss: %v: %s", err, out)
	}
	return string(out)
}

// grown lists the series of the named counters that grew since l, with
// how much, for a failure message.
func (g *gateway) grown(t *testing.T, l level, names ...string) string {
	t.Helper()
	key := func(s attack.Sample) string { return fmt.Sprintf("%s%v", s.Name, s.Labels) }
	was := map[string]float64{}
	for _, s := range l.scrape {
		was[key(s)] = s.Value
	}
	var out []string
	for _, s := range g.metrics(t) {
		if slices.Contains(names, s.Name) && s.Value != was[key(s)] {
			out = append(out, fmt.Sprintf("%s +%v", key(s), s.Value-was[key(s)]))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}
