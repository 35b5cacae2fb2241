package gateway

import (
	"testing"
	"time"
)

// TestCacheMissesDeDuplicate: a channel's misses are recorded once per
// window, at most, and again once a window has passed with none; other
// channels are apart; what is old is forgotten.
func TestCacheMissesDeDuplicate(t *testing.T) {
	var m cacheMisses
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	for _, c := range []struct {
		key  string
		at   time.Duration
		want bool
	}{
		{"a", 0, true},
		{"a", time.Second, false},
		{"b", time.Second, true},
		{"a", cacheMissWindow - time.Millisecond, false},
		{"a", cacheMissWindow, false}, // in the previous generation still
		{"c", cacheMissWindow, true},
		{"a", 2 * cacheMissWindow, true}, // a window after the last generation that had it
		{"c", 2*cacheMissWindow + time.Second, false},
		{"b", 5 * cacheMissWindow, true}, // long idle: all forgotten
		{"c", 5 * cacheMissWindow, true},
	} {
		if got := m.first(c.key, at(c.at)); got != c.want {
			t.Fatalf("%s at %v: first = %v, want %v", c.key, c.at, got, c.want)
		}
	}
	if len(m.prev) != 0 || len(m.cur) != 2 {
		t.Fatalf("kept %d and %d channels, want 0 and 2", len(m.prev), len(m.cur))
	}
}
