package loadgen

import (
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
)

// histSubBits sets the histogram's precision: every power of two is split
// into 2^histSubBits linear sub-buckets, so a recorded value is known to
// within 1/128 (under 0.8%) of itself. Values below 2^(histSubBits+1) are
// exact.
const histSubBits = 7

// Hist is a log-linear histogram of non-negative integers (nanoseconds
// here), in the manner of HdrHistogram: fixed bucket boundaries that do not
// depend on the data, so two histograms merge by adding their counts and
// percentiles of the merged histogram are as exact as those of one. It is
// not safe for concurrent use; each poller keeps its own and they are
// merged at the end.
type Hist struct {
	counts []uint64
	n      uint64
	sum    float64
	min    int64
	max    int64
}

// bucketOf returns v's bucket index.
func bucketOf(v int64) int {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	if u < 1<<(histSubBits+1) {
		return int(u)
	}
	shift := bits.Len64(u) - histSubBits - 1
	return shift<<histSubBits + int(u>>shift)
}

// bucketRange returns the smallest and largest value of bucket i.
func bucketRange(i int) (lo, hi int64) {
	if i < 1<<(histSubBits+1) {
		return int64(i), int64(i)
	}
	shift := i>>histSubBits - 1
	m := int64(i - shift<<histSubBits)
	return m << shift, (m+1)<<shift - 1
}

// Record adds one value.
func (h *Hist) Record(v int64) {
	if v < 0 {
		v = 0
	}
	i := bucketOf(v)
	if i >= len(h.counts) {
		h.grow(i)
	}
	h.counts[i]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

func (h *Hist) grow(i int) {
	n := max(2*len(h.counts), i+1, 1<<(histSubBits+2))
	c := make([]uint64, n)
	copy(c, h.counts)
	h.counts = c
}

// Count is the number of recorded values.
func (h *Hist) Count() uint64 { return h.n }

// Max is the largest recorded value (exact).
func (h *Hist) Max() int64 { return h.max }

// Min is the smallest recorded value (exact).
func (h *Hist) Min() int64 { return h.min }

// Mean is the exact mean.
func (h *Hist) Mean() float64 {
	if h.n == 0 {
		return 0
	}
	return h.sum / float64(h.n)
}

// Merge adds o's values to h.
func (h *Hist) Merge(o *Hist) {
	if o == nil || o.n == 0 {
		return
	}
	if len(o.counts) > len(h.counts) {
		h.grow(len(o.counts) - 1)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// Quantile returns the value at quantile q (0..1): the largest value of the
// bucket holding the ceil(q·n)-th smallest value, clamped to the exact
// minimum and maximum. So it never under-reports by more than a bucket.
func (h *Hist) Quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	if q <= 0 {
		return h.min
	}
	if q >= 1 {
		return h.max
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := bucketRange(i)
			return min(max(hi, h.min), h.max)
		}
	}
	return h.max
}

// histJSON is the wire form: sparse [bucket, count] pairs, so that an
// empty or narrow histogram stays small in a summary line.
type histJSON struct {
	Unit    string      `json:"unit"`
	SubBits int         `json:"sub_bits"`
	Count   uint64      `json:"count"`
	Sum     float64     `json:"sum"`
	Min     int64       `json:"min"`
	Max     int64       `json:"max"`
	Buckets [][2]uint64 `json:"buckets"`
}

// MarshalJSON writes the histogram in its mergeable form.
func (h *Hist) MarshalJSON() ([]byte, error) {
	j := histJSON{Unit: "ns", SubBits: histSubBits, Count: h.n, Sum: h.sum, Min: h.min, Max: h.max, Buckets: [][2]uint64{}}
	for i, c := range h.counts {
		if c != 0 {
			j.Buckets = append(j.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (h *Hist) UnmarshalJSON(b []byte) error {
	var j histJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if j.SubBits != histSubBits || (j.Unit != "" && j.Unit != "ns") {
		return fmt.Errorf("histogram with sub_bits %d unit %q, want %d ns", j.SubBits, j.Unit, histSubBits)
	}
	*h = Hist{}
	var total uint64
	for _, b := range j.Buckets {
		if b[0] > 1<<20 {
			return fmt.Errorf("histogram bucket %d out of range", b[0])
		}
		i := int(b[0])
		if i >= len(h.counts) {
			h.grow(i)
		}
		h.counts[i] += b[1]
		total += b[1]
	}
	if total != j.Count {
		return fmt.Errorf("histogram count %d but buckets hold %d", j.Count, total)
	}
	h.n, h.sum, h.min, h.max = j.Count, j.Sum, j.Min, j.Max
	return nil
}

// Percentiles is the readable digest of a histogram, in milliseconds.
type Percentiles struct {
	Count uint64  `json:"count"`
	Min   float64 `json:"min"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

func ms(ns int64) float64 { return math.Round(float64(ns)/1e3) / 1e3 }

// Digest summarises h in milliseconds (microsecond resolution).
func (h *Hist) Digest() Percentiles {
	return Percentiles{
		Count: h.n,
		Min:   ms(h.min),
		Mean:  math.Round(h.Mean()/1e3) / 1e3,
		P50:   ms(h.Quantile(0.5)),
		P90:   ms(h.Quantile(0.9)),
		P99:   ms(h.Quantile(0.99)),
		P999:  ms(h.Quantile(0.999)),
		Max:   ms(h.max),
	}
}
