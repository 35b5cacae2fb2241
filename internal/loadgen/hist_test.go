package loadgen

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestBucketsCoverEveryValueWithSmallError(t *testing.T) {
	check := func(v int64) {
		i := bucketOf(v)
		lo, hi := bucketRange(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d = [%d, %d]", v, i, lo, hi)
		}
		if v > 0 && float64(hi-lo)/float64(v) > 1.0/(1<<histSubBits) {
			t.Fatalf("bucket [%d, %d] too wide for %d", lo, hi, v)
		}
	}
	for v := int64(0); v < 100000; v++ {
		check(v)
	}
	for s := 0; s < 63; s++ {
		for _, d := range []int64{-1, 0, 1} {
			if v := int64(1)<<s + d; v >= 0 {
				check(v)
			}
		}
	}
	check(math.MaxInt64)
	// Buckets are contiguous: each starts one after the previous ends.
	prevHi := int64(-1)
	for i := 0; i < bucketOf(math.MaxInt64); i++ {
		lo, hi := bucketRange(i)
		if lo != prevHi+1 || hi < lo {
			t.Fatalf("bucket %d = [%d, %d] after %d", i, lo, hi, prevHi)
		}
		prevHi = hi
	}
}

func TestQuantilesWithinOnePercent(t *testing.T) {
	var h Hist
	var all []int64
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		// Log-normal-ish latencies from 50 µs to seconds.
		v := int64(math.Exp(rng.NormFloat64()*1.5+13.5)) + 50000
		h.Record(v)
		all = append(all, v)
	}
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := all[int(math.Ceil(q*float64(len(all))))-1]
		got := h.Quantile(q)
		if got < exact || float64(got-exact)/float64(exact) > 0.01 {
			t.Errorf("q%.3f = %d, exact %d", q, got, exact)
		}
	}
	if h.Quantile(1) != all[len(all)-1] || h.Min() != all[0] || h.Max() != all[len(all)-1] {
		t.Errorf("min/max %d/%d, want %d/%d", h.Min(), h.Max(), all[0], all[len(all)-1])
	}
	var empty Hist
	if empty.Quantile(0.5) != 0 || empty.Digest().Count != 0 {
		t.Error("empty histogram")
	}
}

func TestMergeEqualsRecordingEverything(t *testing.T) {
	var a, b, both Hist
	for i := int64(1); i <= 5000; i++ {
		v := i * i * 37
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
		both.Record(v)
	}
	// Merge through JSON, as `loadgen merge` does.
	var ja, jb Hist
	for _, p := range []struct {
		src *Hist
		dst *Hist
	}{{&a, &ja}, {&b, &jb}} {
		raw, err := json.Marshal(p.src)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, p.dst); err != nil {
			t.Fatal(err)
		}
	}
	var m Hist
	m.Merge(&ja)
	m.Merge(&jb)
	if m.Count() != both.Count() || m.Min() != both.Min() || m.Max() != both.Max() || m.Mean() != both.Mean() {
		t.Fatalf("merged %d [%d,%d] mean %f, want %d [%d,%d] mean %f", m.Count(), m.Min(), m.Max(), m.Mean(), both.Count(), both.Min(), both.Max(), both.Mean())
	}
	for _, q := range []float64{0.1, 0.5, 0.9, 0.99, 0.999} {
		if m.Quantile(q) != both.Quantile(q) {
			t.Errorf("q%v: merged %d, want %d", q, m.Quantile(q), both.Quantile(q))
		}
	}
}

func TestHistJSONRejectsMismatch(t *testing.T) {
	var h Hist
	if err := json.Unmarshal([]byte(`{"unit":"ns","sub_bits":5,"count":0,"buckets":[]}`), &h); err == nil {
		t.Error("accepted other sub_bits")
	}
	if err := json.Unmarshal([]byte(`{"unit":"ns","sub_bits":7,"count":3,"buckets":[[1,1]]}`), &h); err == nil {
		t.Error("accepted a count that does not match the buckets")
	}
}

func TestMergeSummaries(t *testing.T) {
	mk := func(lat []int64, deliveries int64) *Summary {
		s := &Summary{Mode: ModeFanout, Run: "r", Processes: 1, Shards: []string{"x"}, Fanout: &FanoutStats{Deliveries: deliveries, Expected: deliveries, DeliveriesPerSec: 100}}
		s.Hist.Latency = &Hist{}
		for _, v := range lat {
			s.Hist.Latency.Record(v)
		}
		s.Conns.Failures = map[string]int64{"refused": 1}
		s.finish()
		raw, _ := json.Marshal(s)
		var back Summary
		if err := json.Unmarshal(raw, &back); err != nil {
			t.Fatal(err)
		}
		return &back
	}
	// One process saw only fast deliveries, the other only slow ones: the
	// merged p50 must fall between, which averaging percentiles gets wrong.
	a := mk([]int64{1e6, 1e6, 1e6}, 3)
	b := mk([]int64{9e6, 9e6, 9e6, 9e6}, 4)
	m, err := Merge([]*Summary{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if m.Processes != 2 || m.Fanout.Deliveries != 7 || m.Fanout.DeliveriesPerSec != 200 || m.Conns.Failures["refused"] != 2 {
		t.Fatalf("merged %+v %+v", m, m.Fanout)
	}
	if m.LatencyMs.Count != 7 || math.Abs(m.LatencyMs.P50-9) > 0.1 || math.Abs(m.LatencyMs.Min-1) > 0.01 {
		t.Fatalf("merged latency %+v", *m.LatencyMs)
	}
	if _, err := Merge([]*Summary{a, {Mode: ModeIdle}}); err == nil {
		t.Error("merged different modes")
	}
}
