//go:build linux

package main

import (
	"math"
	"slices"
	"strconv"
	"strings"
)

// Stat is a metric over repeated runs.
type Stat struct {
	N      int
	Median float64
	Min    float64
	Max    float64
}

// Summarize returns the median and range of vs; N is 0 when vs is empty.
// An even count takes the mean of the two middle values.
func Summarize(vs []float64) Stat {
	if len(vs) == 0 {
		return Stat{}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	m := s[n/2]
	if n%2 == 0 {
		m = (s[n/2-1] + s[n/2]) / 2
	}
	return Stat{N: n, Median: m, Min: s[0], Max: s[n-1]}
}

// Ratio is a/b, or NaN when it means nothing.
func Ratio(a, b Stat) float64 {
	if a.N == 0 || b.N == 0 || b.Median == 0 {
		return math.NaN()
	}
	return a.Median / b.Median
}

// sig formats v with about three significant digits and no exponent.
func sig(v float64) string {
	switch a := math.Abs(v); {
	case a == 0:
		return "0"
	case a >= 100:
		return thousands(math.Round(v))
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

// f1 formats v with one decimal: 27.3.
func f1(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// thousands writes an integer part with commas: 19,000.
func thousands(v float64) string {
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// compact writes large rates shortly: 625k, 8.02k, 1.2M.
func compact(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return sig(v/1e6) + "M"
	case a >= 1e4:
		return sig(v/1e3) + "k"
	default:
		return sig(v)
	}
}
