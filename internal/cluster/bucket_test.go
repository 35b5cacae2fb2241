package cluster_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/cluster/clustertest"
)

func set(v string) func([]byte) ([]byte, error) {
	return func([]byte) ([]byte, error) {
		if v == "" {
			return nil, nil
		}
		return []byte(v), nil
	}
}

func TestEnsureTurnsOnExpiringMarkers(t *testing.T) {
	_, js := startJetStream(t)
	ctx := testCtx(t)
	s := ensure(t, js, cluster.Options{})
	for _, b := range []*cluster.Bucket{s.Presence, s.Users, s.Counts} {
		st, err := b.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.LimitMarkerTTL() != cluster.DefaultMarkerTTL || b.MarkerTTL() != cluster.DefaultMarkerTTL {
			t.Errorf("bucket %s: marker TTL %v (store %v), want %v", b.Bucket(), st.LimitMarkerTTL(), b.MarkerTTL(), cluster.DefaultMarkerTTL)
		}
	}
	// Under a second is raised to the server's least.
	if s := ensure(t, js, cluster.Options{MarkerTTL: time.Millisecond}); s.Presence.MarkerTTL() != time.Second {
		t.Fatalf("marker TTL %v, want 1s", s.Presence.MarkerTTL())
	}
}

// TestRemovedKeysLeaveNoMarkers: keys removed through Mutate (and through
// the bucket's Delete and Purge) are gone from the stream once their
// markers expire; the keys that stay keep their values.
func TestRemovedKeysLeaveNoMarkers(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Presence
	ctx := clustertest.Context(t)
	for i := range 30 {
		if err := cluster.Mutate(ctx, b, "k"+strconv.Itoa(i), set("v")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		if err := cluster.Mutate(ctx, b, "k"+strconv.Itoa(i), set("")); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Delete(ctx, "k20"); err != nil {
		t.Fatal(err)
	}
	if err := b.Purge(ctx, "k21"); err != nil {
		t.Fatal(err)
	}
	clustertest.AwaitSettled(t, ctx, b, 8)
	for i := 22; i < 30; i++ {
		if e, err := b.Get(ctx, "k"+strconv.Itoa(i)); err != nil || string(e.Value()) != "v" {
			t.Fatalf("k%d: %v", i, err)
		}
	}
	// A key whose marker is gone is created afresh.
	if err := cluster.Mutate(ctx, b, "k0", set("again")); err != nil {
		t.Fatal(err)
	}
	if e, err := b.Get(ctx, "k0"); err != nil || string(e.Value()) != "again" {
		t.Fatalf("k0 re-created: %v", err)
	}
}

// TestEnsureUpdatesABucketOfAnEarlierRelease: buckets made before markers
// expired are updated in place by Ensure, their values kept; the
// permanent Delete markers they hold are made to expire by the next sweep.
// An earlier release's Ensure can no longer change them back.
func TestEnsureUpdatesABucketOfAnEarlierRelease(t *testing.T) {
	_, js := startJetStream(t)
	ctx := testCtx(t)
	old := jetstream.KeyValueConfig{Bucket: cluster.BucketPresence, Description: "presence channel members", Storage: jetstream.FileStorage, History: 1, Replicas: 1}
	kv, err := js.CreateKeyValue(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "kept", []byte("v")); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"gone-1", "gone-2"} {
		if _, err := kv.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
		if err := kv.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// One more marker, written by a gateway of the earlier release that is
	// still running after the update.
	s := ensure(t, js, cluster.Options{MarkerTTL: clustertest.MarkerTTL})
	if _, err := kv.Put(ctx, "gone-3", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "gone-3"); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Presence.Status(ctx); err != nil || st.LimitMarkerTTL() != clustertest.MarkerTTL || st.Values() != 4 {
		t.Fatalf("updated bucket: %v", err)
	}
	if e, err := s.Presence.Get(ctx, "kept"); err != nil || string(e.Value()) != "v" {
		t.Fatalf("the update lost a value: %v", err)
	}
	var swept []string
	if err := s.Presence.Sweep(ctx, func(_ context.Context, k string) error { swept = append(swept, k); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(swept) != 1 || swept[0] != "kept" {
		t.Fatalf("swept %v, want the one live key", swept)
	}
	clustertest.AwaitSettled(t, ctx, s.Presence, 1)

	// The server lets a stream turn per-message TTLs on, never off: an
	// earlier release's Ensure now fails (see Ensure).
	if _, err := js.CreateOrUpdateKeyValue(ctx, old); err == nil || !strings.Contains(err.Error(), "can not be disabled") {
		t.Fatalf("the earlier release's configuration: %v, want a refusal", err)
	}
}

// TestUpdateAgainstAnExpiredMarkerIsAConflict pins down the interleaving
// a create racing a marker's expiry meets: Create reads the marker's
// revision, the marker expires, Create updates against that revision. The
// update must fail as a conflict (so that Mutate reads again and creates
// afresh, still a compare-and-set), never succeed and never fail
// otherwise; and while the marker lasts, of two updates against it exactly
// one wins.
func TestUpdateAgainstAnExpiredMarkerIsAConflict(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Users
	ctx := clustertest.Context(t)
	markerRev := func(key string) uint64 {
		t.Helper()
		w, err := b.Watch(ctx, key, jetstream.MetaOnly())
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = w.Stop() }()
		e := <-w.Updates()
		if e == nil || e.Operation() != jetstream.KeyValuePurge {
			t.Fatalf("no marker under %s: %v", key, e)
		}
		return e.Revision()
	}
	for _, k := range []string{"held", "expired"} {
		if err := cluster.Mutate(ctx, b, k, set("v")); err != nil {
			t.Fatal(err)
		}
		if err := cluster.Mutate(ctx, b, k, set("")); err != nil {
			t.Fatal(err)
		}
	}
	held := markerRev("held")
	if _, err := b.Update(ctx, "held", []byte("first"), held); err != nil {
		t.Fatalf("update against a live marker: %v", err)
	}
	if _, err := b.Update(ctx, "held", []byte("second"), held); err == nil {
		t.Fatal("a second update against the same marker won too")
	}
	expired := markerRev("expired")
	clustertest.AwaitSettled(t, ctx, b, 1) // only "held" is left
	_, err := b.Update(ctx, "expired", []byte("late"), expired)
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		t.Fatalf("update against an expired marker: %v, want a wrong-last-sequence conflict", err)
	}
	if err := cluster.Mutate(ctx, b, "expired", set("fresh")); err != nil {
		t.Fatal(err)
	}
	if e, err := b.Get(ctx, "expired"); err != nil || string(e.Value()) != "fresh" {
		t.Fatalf("after the conflict: %v", err)
	}
}

// TestCreateRacingMarkerExpiryIsExact: in each round the key is removed,
// then goroutines on their own connections race to create it around the
// time its marker expires. Exactly one create wins each round.
func TestCreateRacingMarkerExpiryIsExact(t *testing.T) {
	const racers, rounds = 6, 4
	gws := clustertest.Gateways(t, racers)
	ctx := clustertest.Context(t)
	for round := range rounds {
		if err := cluster.Mutate(ctx, gws[0].Counts, "token", set("")); err != nil {
			t.Fatal(err)
		}
		// Around the one-second marker TTL, earlier and later in turn.
		wait := clustertest.MarkerTTL - 200*time.Millisecond + time.Duration(round)*100*time.Millisecond
		var won atomic.Int32
		clustertest.Concurrently(t, racers, func(i int) error {
			time.Sleep(wait)
			claimed := false
			err := cluster.Mutate(ctx, gws[i].Counts, "token", func(old []byte) ([]byte, error) {
				claimed = old == nil
				if !claimed {
					return old, nil
				}
				return []byte("racer-" + strconv.Itoa(i)), nil
			})
			if err == nil && claimed {
				won.Add(1)
			}
			return err
		})
		if n := won.Load(); n != 1 {
			t.Fatalf("round %d (after %v): %d creates won, want exactly 1", round, wait, n)
		}
	}
}

// TestSweepGoesOnPastAFailingKey: one rule for every sweep's errors.
func TestSweepGoesOnPastAFailingKey(t *testing.T) {
	b := clustertest.Gateways(t, 1)[0].Counts
	ctx := clustertest.Context(t)
	for _, k := range []string{"a", "b", "c", "d"} {
		if _, err := b.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("boom")
	var seen []string
	err := b.Sweep(ctx, func(_ context.Context, k string) error {
		seen = append(seen, k)
		if k == "b" || k == "c" {
			return boom
		}
		return nil
	})
	if len(seen) != 4 {
		t.Fatalf("swept %v, want every key", seen)
	}
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "key b") || !strings.Contains(err.Error(), "key c") {
		t.Fatalf("Sweep = %v, want both keys' errors", err)
	}
	// An empty bucket sweeps to nothing.
	empty := clustertest.Gateways(t, 1)[0].Users
	if err := empty.Sweep(ctx, func(context.Context, string) error { t.Fatal("called"); return nil }); err != nil {
		t.Fatal(err)
	}
	// A sweep whose context ends says so.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.Sweep(done, func(context.Context, string) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sweep on an ended context = %v", err)
	}
}
