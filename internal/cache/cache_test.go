package cache_test

import (
	"testing"

	"github.com/resoundhq/resound/internal/cache"
	"github.com/resoundhq/resound/internal/cluster"
	"github.com/resoundhq/resound/internal/cluster/clustertest"
	"github.com/resoundhq/resound/internal/httpapi"
)

// The store answers the HTTP API's cache question itself.
var _ httpapi.CacheReader = (*cache.Store)(nil)

func TestPutGet(t *testing.T) {
	stores := clustertest.Gateways(t, 1)[0]
	s, ctx := cache.New(stores.Cache, stores.CacheTTL()), clustertest.Context(t)

	if ev, err := s.Get(ctx, "app", "cache-news"); ev != nil || err != nil {
		t.Fatalf("empty channel: %v, %v", ev, err)
	}
	if err := s.Put(ctx, "app", "cache-news", "e1", `{"n":1}`); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "app", "cache-news", "e2", `{"n":2}`); err != nil {
		t.Fatal(err)
	}
	ev, ttl, err := s.CachedEvent(ctx, "app", "cache-news")
	if err != nil || ev == nil || *ev != (cache.Event{Event: "e2", Data: `{"n":2}`}) {
		t.Fatalf("last event: %v, %v", ev, err)
	}
	if ttl <= 0 || ttl > stores.CacheTTL() {
		t.Errorf("ttl %v, bucket's %v", ttl, stores.CacheTTL())
	}
	// Another app's channel of the same name is apart.
	if ev, _ := s.Get(ctx, "other", "cache-news"); ev != nil {
		t.Errorf("other app sees %v", ev)
	}
	// A value that does not parse reads as none.
	if _, err := stores.Cache.Put(ctx, cluster.Key("app", "cache-bad"), []byte("{")); err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Get(ctx, "app", "cache-bad"); ev != nil || err != nil {
		t.Errorf("garbage: %v, %v", ev, err)
	}
}
