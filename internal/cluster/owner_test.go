package cluster

import (
	"testing"

	"github.com/nats-io/nuid"
)

// Rendezvous hashing shares the partitions out: with two workers, each
// gets some of eight partitions nearly always (all eight to one worker
// happens 1 time in 128 by chance). Ids from one process share a prefix,
// as the pools of a test do, and ids from two processes do not.
func TestOwnerSharesLanes(t *testing.T) {
	const partitions, trials = 8, 1000
	for _, sameProcess := range []bool{true, false} {
		lopsided := 0
		for range trials {
			a, b := nuid.Next(), nuid.Next()
			if !sameProcess {
				b = nuid.New().Next()
			}
			live := map[string]bool{a: true, b: true}
			n := 0
			for k := range partitions {
				if Owner(k, live) == a {
					n++
				}
			}
			if n == 0 || n == partitions {
				lopsided++
			}
		}
		// Expected 1000/128 ≈ 8; 40 would be far outside chance.
		if lopsided > 40 {
			t.Errorf("same process %v: one worker got every partition in %d of %d trials", sameProcess, lopsided, trials)
		}
	}
}

// Every worker computes the same owner, and a third worker joining takes
// partitions only from the others, never moves one between them.
func TestOwnerIsStable(t *testing.T) {
	a, b, c := nuid.Next(), nuid.Next(), nuid.Next()
	two := map[string]bool{a: true, b: true}
	three := map[string]bool{a: true, b: true, c: true}
	for k := range 64 {
		before, after := Owner(k, two), Owner(k, three)
		if after != before && after != c {
			t.Errorf("partition %d moved from %s to %s when %s joined", k, before, after, c)
		}
		if Owner(k, map[string]bool{b: true, a: true}) != before {
			t.Errorf("partition %d: owner depends on map order", k)
		}
	}
}
