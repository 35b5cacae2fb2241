package counts_test

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/cluster/clustertest"
	"github.com/resoundhq/resound/internal/counts"
)

func value(t *testing.T, b *cluster.Bucket, key string) map[string]int {
	t.Helper()
	e, err := b.Get(clustertest.Context(t), key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]int
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSlots(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Counts
	s, ctx := counts.New(b), clustertest.Context(t)
	key := cluster.Key("conns", "app")
	for _, gw := range []string{"gw-a", "gw-a", "gw-b"} {
		if err := s.AcquireSlot(ctx, "app", gw, 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AcquireSlot(ctx, "app", "gw-c", 3); !errors.Is(err, counts.ErrOverQuota) {
		t.Fatalf("past the cap: %v, want ErrOverQuota", err)
	}
	if got := value(t, b, key); !reflect.DeepEqual(got, map[string]int{"gw-a": 2, "gw-b": 1}) {
		t.Fatalf("slots %v", got)
	}
	// Another app has its own cap; no cap counts all the same.
	if err := s.AcquireSlot(ctx, "other", "gw-a", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseSlot(ctx, "app", "gw-a"); err != nil {
		t.Fatal(err)
	}
	if err := s.AcquireSlot(ctx, "app", "gw-c", 3); err != nil {
		t.Fatalf("after a release: %v", err)
	}
	// Releasing what a gateway does not hold changes nothing.
	e, _ := b.Get(ctx, key)
	if err := s.ReleaseSlot(ctx, "app", "gw-z"); err != nil {
		t.Fatal(err)
	}
	if again, _ := b.Get(ctx, key); again.Revision() != e.Revision() {
		t.Fatal("a release of nothing wrote the key")
	}
	for _, gw := range []string{"gw-a", "gw-b", "gw-c"} {
		if err := s.ReleaseSlot(ctx, "app", gw); err != nil {
			t.Fatal(err)
		}
	}
	if got := value(t, b, key); got != nil {
		t.Fatalf("every slot released, but %v", got)
	}
	if err := s.ReleaseSlot(ctx, "other", "gw-a"); err != nil {
		t.Fatal(err)
	}
	clustertest.AwaitSettled(t, ctx, b, 0)
}

func TestSetSubscriptions(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Counts
	s, ctx := counts.New(b), clustertest.Context(t)
	set := func(ch, gw string, n, want int) {
		t.Helper()
		total, err := s.SetSubscriptions(ctx, "app", ch, gw, n)
		if err != nil || total != want {
			t.Fatalf("SetSubscriptions(%s, %s, %d) = %d, %v; want %d", ch, gw, n, total, err, want)
		}
	}
	set("news", "gw-a", 2, 2)
	set("news", "gw-b", 3, 5)
	set("news", "gw-a", 1, 4)
	set("other", "gw-a", 1, 1)
	set("news", "gw-c", 0, 4) // nothing to forget
	if got := value(t, b, cluster.Key("subs", "app", "news")); !reflect.DeepEqual(got, map[string]int{"gw-a": 1, "gw-b": 3}) {
		t.Fatalf("news %v", got)
	}
	set("news", "gw-a", 0, 3)
	set("news", "gw-b", 0, 0)
	set("other", "gw-a", 0, 0)
	set("never", "gw-a", 0, 0)
	clustertest.AwaitSettled(t, ctx, b, 0)
}

// TestChangeSubscriptions: the totals before and after each write, and
// its revision, which orders every change of the channel, its removal
// included.
func TestChangeSubscriptions(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Counts
	s, ctx := counts.New(b), clustertest.Context(t)
	var last uint64
	change := func(gw string, n, before, after int, occupied, vacated bool) counts.Change {
		t.Helper()
		c, err := s.ChangeSubscriptions(ctx, "app", "news", gw, n)
		if err != nil || c.Before != before || c.After != after || c.Occupied() != occupied || c.Vacated() != vacated {
			t.Fatalf("ChangeSubscriptions(%s, %d) = %+v, %v; want %d -> %d", gw, n, c, err, before, after)
		}
		return c
	}
	ordered := func(c counts.Change) {
		t.Helper()
		if c.Rev <= last {
			t.Fatalf("rev %d after %d", c.Rev, last)
		}
		last = c.Rev
	}
	ordered(change("gw-a", 1, 0, 1, true, false))
	ordered(change("gw-b", 2, 1, 3, false, false))
	// The same count again writes nothing, and says nothing changed.
	e, _ := b.Get(ctx, cluster.Key("subs", "app", "news"))
	if c := change("gw-b", 2, 3, 3, false, false); c.Rev != e.Revision() {
		t.Fatalf("unchanged: rev %d, want %d", c.Rev, e.Revision())
	}
	if again, _ := b.Get(ctx, cluster.Key("subs", "app", "news")); again.Revision() != e.Revision() {
		t.Fatal("an unchanged count wrote the key")
	}
	ordered(change("gw-a", 0, 3, 2, false, false))
	ordered(change("gw-b", 0, 2, 0, false, true))
	ordered(change("gw-a", 4, 0, 4, true, false)) // back: after the removal
	ordered(change("gw-a", 0, 4, 0, false, true))
	if c := change("gw-a", 0, 0, 0, false, false); c.Rev != 0 {
		t.Fatalf("nothing to forget on no key: rev %d", c.Rev)
	}
	clustertest.AwaitSettled(t, ctx, b, 0)
}

// TestChurn: gateways take and give back connection slots under a cap,
// and set their subscription counts up and down, at once. The cap is
// never passed; afterwards each key holds exactly each gateway's count, a
// key whose counts all reached zero is gone, and no marker outlives its
// TTL.
func TestChurn(t *testing.T) {
	const (
		gateways = 6
		steps    = 60
		limit    = 8
		channels = 3
	)
	gws := clustertest.Gateways(t, gateways)
	ctx := clustertest.Context(t)
	var (
		inUse     atomic.Int32 // never above what the bucket holds
		overQuota atomic.Int32
		mu        sync.Mutex
		slots     = map[string]int{}            // gateway -> slots held
		subs      = map[string]map[string]int{} // channel -> gateway -> count
	)
	clustertest.Concurrently(t, gateways, func(g int) error {
		s, gw := counts.New(gws[g].Counts), "gw-"+strconv.Itoa(g)
		rng := rand.New(rand.NewPCG(uint64(g), 5))
		held := 0
		mine := map[string]int{}
		for range steps {
			switch op := rng.IntN(4); {
			case op == 0 && held > 0:
				// Out of the tally before the store, so the tally
				// never counts a slot the bucket no longer has.
				inUse.Add(-1)
				if err := s.ReleaseSlot(ctx, "app", gw); err != nil {
					return err
				}
				held--
			case op <= 1:
				err := s.AcquireSlot(ctx, "app", gw, limit)
				if errors.Is(err, counts.ErrOverQuota) {
					overQuota.Add(1)
					continue
				}
				if err != nil {
					return err
				}
				held++
				if inUse.Add(1) > limit {
					return errors.New("the connection cap was passed")
				}
			default:
				ch := "ch-" + strconv.Itoa(rng.IntN(channels))
				n := max(0, mine[ch]+rng.IntN(5)-2)
				if _, err := s.SetSubscriptions(ctx, "app", ch, gw, n); err != nil {
					return err
				}
				mine[ch] = n
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if held > 0 {
			slots[gw] = held
		}
		for ch, n := range mine {
			if n > 0 {
				if subs[ch] == nil {
					subs[ch] = map[string]int{}
				}
				subs[ch][gw] = n
			}
		}
		return nil
	})
	t.Logf("%d connections refused at the cap", overQuota.Load())

	b := gws[0].Counts
	keys := 0
	want := func(m map[string]int) map[string]int {
		if len(m) == 0 {
			return nil
		}
		keys++
		return m
	}
	if got, w := value(t, b, cluster.Key("conns", "app")), want(slots); !reflect.DeepEqual(got, w) {
		t.Errorf("slots %v, want %v", got, w)
	}
	for c := range channels {
		ch := "ch-" + strconv.Itoa(c)
		if got, w := value(t, b, cluster.Key("subs", "app", ch)), want(subs[ch]); !reflect.DeepEqual(got, w) {
			t.Errorf("%s: %v, want %v", ch, got, w)
		}
	}
	clustertest.AwaitSettled(t, ctx, b, keys)

	// Every gateway gives everything back: nothing is left.
	s := counts.New(b)
	for gw, n := range slots {
		for range n {
			if err := s.ReleaseSlot(ctx, "app", gw); err != nil {
				t.Fatal(err)
			}
		}
	}
	for ch, m := range subs {
		for gw := range m {
			if _, err := s.SetSubscriptions(ctx, "app", ch, gw, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	clustertest.AwaitSettled(t, ctx, b, 0)
}

// TestRemoveGatewaysExcept is the gateway's sweep of counts, on the store:
// a dead gateway's slots and subscriptions are given back.
func TestRemoveGatewaysExcept(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Counts
	s, ctx := counts.New(b), clustertest.Context(t)
	for _, gw := range []string{"live", "dead", "dead"} {
		if err := s.AcquireSlot(ctx, "app", gw, 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AcquireSlot(ctx, "app", "live", 3); !errors.Is(err, counts.ErrOverQuota) {
		t.Fatalf("full: %v", err)
	}
	for _, c := range []struct {
		ch, gw string
		n      int
	}{{"a", "live", 2}, {"a", "dead", 5}, {"b", "dead", 1}, {"c", "live", 1}} {
		if _, err := s.SetSubscriptions(ctx, "app", c.ch, c.gw, c.n); err != nil {
			t.Fatal(err)
		}
	}
	vacated, err := s.RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true})
	if err != nil {
		t.Fatal(err)
	}
	// Only b lost its last subscriber; a keeps live's.
	if len(vacated) != 1 || vacated[0].App != "app" || vacated[0].Channel != "b" || vacated[0].Rev == 0 {
		t.Fatalf("vacated %+v, want channel b alone", vacated)
	}
	if got := value(t, b, cluster.Key("conns", "app")); !reflect.DeepEqual(got, map[string]int{"live": 1}) {
		t.Fatalf("slots after the sweep: %v", got)
	}
	for ch, want := range map[string]map[string]int{"a": {"live": 2}, "b": nil, "c": {"live": 1}} {
		if got := value(t, b, cluster.Key("subs", "app", ch)); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s after the sweep: %v, want %v", ch, got, want)
		}
	}
	// The slots the dead gateway held are free again.
	for range 2 {
		if err := s.AcquireSlot(ctx, "app", "live", 3); err != nil {
			t.Fatal(err)
		}
	}
	if vacated, err := s.RemoveGatewaysExcept(ctx, cluster.LiveSet{"live": true}); err != nil || len(vacated) != 0 {
		t.Fatalf("a second sweep: %+v, %v", vacated, err)
	}
	clustertest.AwaitSettled(t, ctx, b, 3)
}

func TestLeaseSlots(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Counts
	s, ctx := counts.New(b), clustertest.Context(t)
	key := cluster.Key("conns", "app")
	lease := func(gw string, held, waiting, headroom, limit, granted, leased int) {
		t.Helper()
		l, err := s.LeaseSlots(ctx, "app", gw, held, waiting, headroom, limit)
		if err != nil || l.Granted != granted || l.Leased != leased {
			t.Fatalf("%s: %+v, %v; want %d granted of a lease of %d", gw, l, err, granted, leased)
		}
	}
	// Far from the cap: the waiting connects and the headroom.
	lease("gw-a", 0, 3, 16, 1000, 3, 19)
	// Nearer: the headroom is at most half the room left, shared among
	// the gateways (2 here): (100-19-10)/4 = 17.
	lease("gw-b", 0, 10, 100, 100, 10, 27)
	// Near the cap: the waiting connects first, then (73-3-60)/4 = 2.
	lease("gw-a", 3, 60, 16, 100, 60, 65)
	// At it: what is left of the waiting connects' claim, no headroom.
	lease("gw-b", 10, 30, 16, 100, 25, 35)
	if got := value(t, b, key); !reflect.DeepEqual(got, map[string]int{"gw-a": 65, "gw-b": 35}) {
		t.Fatalf("leases %v", got)
	}
	lease("gw-c", 0, 1, 16, 100, 0, 0)
	// gw-a's connections close, and it gives its surplus back, keeping a
	// headroom of (65-40)/4 = 6.
	lease("gw-a", 40, 0, 16, 100, 0, 46)
	lease("gw-c", 0, 1, 16, 100, 1, 4) // 1 + (100-81-1)/6
	// The held connections are counted even past the cap (a sweep's
	// slots reasserted, a lowered cap).
	lease("gw-d", 20, 0, 16, 100, 0, 20)
	// The same lease again (its answer was lost, say) writes nothing.
	e, _ := b.Get(ctx, key)
	if l, err := s.LeaseSlots(ctx, "app", "gw-d", 20, 0, 16, 100); err != nil || l.Wrote || l.Attempts != 1 {
		t.Fatalf("%+v, %v", l, err)
	}
	if again, _ := b.Get(ctx, key); again.Revision() != e.Revision() {
		t.Fatal("a lease that changes nothing wrote the key")
	}
	// Holding none without headroom forgets the gateway; no cap takes
	// the whole headroom.
	for _, gw := range []string{"gw-a", "gw-b", "gw-c", "gw-d"} {
		lease(gw, 0, 0, 0, 0, 0, 0)
	}
	if got := value(t, b, key); got != nil {
		t.Fatalf("every slot given back, but %v", got)
	}
	lease("gw-a", 0, 2, 1024, 0, 2, 1026)
}

func TestHeadroom(t *testing.T) {
	for _, c := range []struct{ held, waiting, want int }{
		{0, 0, 32}, {100, 0, 32}, {800, 0, 200}, {800, 300, 600}, {4096, 0, 1024}, {1 << 20, 0, 1024}, {0, 5000, 1024},
	} {
		if got := counts.Headroom(c.held, c.waiting); got != c.want {
			t.Errorf("Headroom(%d, %d) = %d, want %d", c.held, c.waiting, got, c.want)
		}
	}
}

// TestLeasesNeverPassTheCap: gateways leasing at once, as their connects
// come and go, never lease more than the cap between them, nor less than
// the connections they hold.
func TestLeasesNeverPassTheCap(t *testing.T) {
	const (
		gateways = 4
		limit    = 200
		steps    = 60
	)
	gws := clustertest.Gateways(t, gateways)
	ctx := clustertest.Context(t)
	key := cluster.Key("conns", "app")
	var inUse atomic.Int32
	clustertest.Concurrently(t, gateways, func(g int) error {
		s, gw := counts.New(gws[g].Counts), "gw-"+strconv.Itoa(g)
		rng := rand.New(rand.NewPCG(uint64(g), 7))
		held := 0
		for range steps {
			closes := min(held, rng.IntN(8))
			held -= closes
			inUse.Add(-int32(closes))
			waiting := rng.IntN(20)
			l, err := s.LeaseSlots(ctx, "app", gw, held, waiting, counts.Headroom(held, waiting), limit)
			if err != nil {
				return err
			}
			held += l.Granted
			if l.Leased < held {
				return errors.New("a lease below the connections held")
			}
			if inUse.Add(int32(l.Granted)) > limit {
				return errors.New("the connection cap was passed")
			}
			e, err := gws[g].Counts.Get(ctx, key)
			if err != nil {
				return err
			}
			var m map[string]int
			if err := json.Unmarshal(e.Value(), &m); err != nil {
				return err
			}
			total := 0
			for _, n := range m {
				total += n
			}
			if total > limit {
				return errors.New("the leases passed the cap: " + string(e.Value()))
			}
		}
		return nil
	})
}
