package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/cluster/clustertest"
	"github.com/resoundhq/resound/internal/config"
	"github.com/resoundhq/resound/internal/counts"
	"github.com/resoundhq/resound/internal/metrics"
)

// slotGateway is just enough of a gateway for its connection slots: the
// counts store on its own NATS connection, metrics, a lifetime.
type slotGateway struct {
	s   *Server
	b   *slotBatcher
	reg *metrics.Registry
}

// slotGateways starts n of them on one embedded JetStream, for an app
// capped at limit.
func slotGateways(t *testing.T, n, limit int) ([]*slotGateway, *cluster.Bucket) {
	t.Helper()
	stores := clustertest.Gateways(t, n)
	app := &config.App{ID: "1", Key: "k", Secret: "s", MaxConnections: limit}
	out := make([]*slotGateway, n)
	for i := range out {
		g := &slotGateway{reg: metrics.NewRegistry()}
		g.s = &Server{log: zerolog.Nop(), retryLog: zerolog.Nop(), counts: counts.New(stores[i].Counts)}
		g.s.opts.GatewayID = "gw-" + strconv.Itoa(i)
		g.s.prom = metrics.NewGateway(g.reg, func() float64 { return 0 }, func() float64 { return 0 })
		g.s.baseCtx, g.s.cancelBase = context.WithCancel(context.Background())
		t.Cleanup(g.s.cancelBase)
		g.b = &slotBatcher{srv: g.s, app: app}
		out[i] = g
	}
	return out, stores[0].Counts
}

// writes is the gateway's resound_count_writes_total of result.
func (g *slotGateway) writes(t *testing.T, result string) int {
	t.Helper()
	mfs, err := g.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "resound_count_writes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	t.Fatalf("no resound_count_writes_total{result=%q}", result)
	return 0
}

// connect runs n connects on g at once and returns how many got a slot.
func (g *slotGateway) connect(t *testing.T, n int) int {
	t.Helper()
	var ok atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := g.b.acquire(context.Background())
			switch {
			case err == nil:
				ok.Add(1)
			case !errors.Is(err, counts.ErrOverQuota):
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	return int(ok.Load())
}

// leases reads the app's key: each gateway's lease.
func leases(t *testing.T, b *cluster.Bucket) map[string]int {
	t.Helper()
	e, err := b.Get(clustertest.Context(t), cluster.Key("conns", "1"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]int
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// Several gateways connecting at once, far past the cap, never pass it
// between them; and the leases in the key never do either.
func TestSlotLeasesNeverPassTheCap(t *testing.T) {
	const gateways, limit, each = 4, 300, 150
	gws, b := slotGateways(t, gateways, limit)
	var got atomic.Int32
	var wg sync.WaitGroup
	for _, g := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 { // waves, so that leases are claimed again
				got.Add(int32(g.connect(t, each/5)))
			}
		}()
	}
	wg.Wait()
	if n := got.Load(); n > limit {
		t.Fatalf("%d connects got a slot, the cap is %d", n, limit)
	}
	m := leases(t, b)
	if sum(m) > limit {
		t.Fatalf("leases %v pass the cap %d", m, limit)
	}
	held := 0
	for _, g := range gws {
		g.b.mu.Lock()
		if m[g.s.opts.GatewayID] < g.b.held {
			t.Errorf("%s holds %d, leases %d", g.s.opts.GatewayID, g.b.held, m[g.s.opts.GatewayID])
		}
		held += g.b.held
		g.b.mu.Unlock()
	}
	// The refusals: at most the headroom the others keep near the cap.
	t.Logf("%d of %d connects got a slot; leases %v", got.Load(), gateways*each, m)
	if held != int(got.Load()) {
		t.Fatalf("held %d, granted %d", held, got.Load())
	}
}

// At one gateway the cap is exact: every slot is used before a connect is
// refused, and a close frees one at once.
func TestSlotLeaseExactAtOneGateway(t *testing.T) {
	const limit = 100
	gws, b := slotGateways(t, 1, limit)
	g := gws[0]
	if n := g.connect(t, 40); n != 40 {
		t.Fatalf("%d of 40 connects", n)
	}
	if n := g.connect(t, 100); n != limit-40 {
		t.Fatalf("%d of 100 connects at 40 held, want %d", n, limit-40)
	}
	if n := g.connect(t, 1); n != 0 {
		t.Fatal("a connect past the cap")
	}
	g.b.giveBack()
	if n := g.connect(t, 2); n != 1 {
		t.Fatalf("%d of 2 connects with one slot free", n)
	}
	if m := leases(t, b); sum(m) != limit {
		t.Fatalf("leases %v", m)
	}
}

// A gateway's lease follows its connections down: closes give the surplus
// back past twice the headroom, and a steady churn writes nothing.
func TestSlotLeaseShrinksAfterCloses(t *testing.T) {
	gws, b := slotGateways(t, 1, 1_000_000)
	g := gws[0]
	if n := g.connect(t, 2000); n != 2000 {
		t.Fatalf("%d of 2000 connects", n)
	}
	idle := func() {
		waitUntil(t, "the batcher idle", func() bool { g.b.mu.Lock(); defer g.b.mu.Unlock(); return !g.b.running })
	}
	idle()
	stored := g.writes(t, "stored")
	// Far fewer writes than connects: the leases grow by a quarter.
	if stored > 60 {
		t.Fatalf("%d writes for 2000 connects", stored)
	}
	t.Logf("2000 connects: %d writes stored, %d lost, lease %v", stored, g.writes(t, "conflict"), leases(t, b))

	// Churn within the headroom: no write.
	for range 500 {
		g.b.giveBack()
		if n := g.connect(t, 1); n != 1 {
			t.Fatal("a connect refused")
		}
	}
	idle()
	if n := g.writes(t, "stored"); n != stored {
		t.Fatalf("%d writes for a churn within the lease", n-stored)
	}

	for range 1900 {
		g.b.giveBack()
	}
	waitUntil(t, "the lease given back", func() bool {
		n := leases(t, b)["gw-0"]
		return n >= 100 && n <= 100+2*counts.Headroom(100, 0)
	})
	t.Logf("after 1900 closes: lease %v, %d writes", leases(t, b), g.writes(t, "stored"))

	// The last close gives the whole lease back: no entry is left.
	for range 100 {
		g.b.giveBack()
	}
	waitUntil(t, "the entry removed", func() bool {
		_, err := b.Get(clustertest.Context(t), cluster.Key("conns", "1"))
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
}

// A gateway's connects contend for the key with the others' only when
// their leases run out: with leases, a few writes per hundred connects.
func TestSlotLeaseWritesPerConnect(t *testing.T) {
	const gateways, each = 6, 1000
	gws, _ := slotGateways(t, gateways, 1_000_000)
	var wg sync.WaitGroup
	for _, g := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if n := g.connect(t, each/20); n != each/20 {
					t.Errorf("%d of %d connects", n, each/20)
				}
			}
		}()
	}
	wg.Wait()
	stored, lost, unchanged := 0, 0, 0
	for _, g := range gws {
		stored += g.writes(t, "stored")
		lost += g.writes(t, "conflict")
		unchanged += g.writes(t, "unchanged")
	}
	attempts := stored + lost + unchanged
	perConnect := float64(attempts) / (gateways * each)
	t.Logf("%d gateways, %d connects: %.3f write attempts per connect (%d stored, %d lost, %d unchanged)",
		gateways, gateways*each, perConnect, stored, lost, unchanged)
	if perConnect > 0.05 {
		t.Fatalf("%.3f write attempts per connect", perConnect)
	}
}

// A sweep that took a live gateway for dead removed its lease with its
// entry; Reassert writes back the slots it holds, and no more: the unused
// ones may be another gateway's by now.
func TestSlotLeaseReassertedAfterASweep(t *testing.T) {
	const limit = 100
	gws, b := slotGateways(t, 2, limit)
	a, other := gws[0], gws[1]
	if n := a.connect(t, 30); n != 30 {
		t.Fatalf("%d of 30 connects", n)
	}
	waitUntil(t, "the batcher idle", func() bool { a.b.mu.Lock(); defer a.b.mu.Unlock(); return !a.b.running })
	if _, err := counts.New(b).RemoveGatewaysExcept(clustertest.Context(t), cluster.LiveSet{"gw-1": true}); err != nil {
		t.Fatal(err)
	}
	// Meanwhile the other gateway takes all the room there is.
	if n := other.connect(t, 100); n != limit {
		t.Fatalf("%d of 100 connects on the only gateway left", n)
	}
	a.b.reassert()
	waitUntil(t, "the slots held written back", func() bool { return leases(t, b)["gw-0"] == 30 })
	if m := leases(t, b); m["gw-0"] != 30 || m["gw-1"] != limit {
		t.Fatalf("leases %v", m)
	}
}
