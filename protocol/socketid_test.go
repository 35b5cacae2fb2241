package protocol

import (
	"math"
	"strconv"
	"strings"
	"testing"
)

func TestValidSocketID(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"123.456", true},
		{"1.1", true},
		{"0.0", true},
		{"1234.1234", true},
		{"18446744073709551615.18446744073709551615", true},
		{"", false},
		{".", false},
		{".1", false},
		{"1.", false},
		{"1.2.3", false},
		{"1..2", false},
		{"a.1", false},
		{"1.a", false},
		{"1", false},
		{"abc", false},
		{"-1.2", false},
		{"+1.2", false},
		{"1.-2", false},
		{" 1.2", false},
		{"1.2 ", false},
		{"1.2\n", false},
		{"1,2", false},
		{"1e3.2", false},
		{"١.٢", false}, // Arabic-Indic digits are not \d in the PHP sense
	}
	for _, tt := range tests {
		if got := ValidSocketID(tt.in); got != tt.want {
			t.Errorf("ValidSocketID(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestAppendSocketID(t *testing.T) {
	tests := []struct {
		a, b uint64
		want string
	}{
		{123, 456, "123.456"},
		{0, 0, "0.0"},
		{1, 1_000_000_000, "1.1000000000"},
		{math.MaxUint64, math.MaxUint64, "18446744073709551615.18446744073709551615"},
	}
	for _, tt := range tests {
		got := string(AppendSocketID(nil, tt.a, tt.b))
		if got != tt.want {
			t.Errorf("AppendSocketID(nil, %d, %d) = %q, want %q", tt.a, tt.b, got, tt.want)
		}
		if !ValidSocketID(got) {
			t.Errorf("ValidSocketID(AppendSocketID(%d, %d)) = false for %q", tt.a, tt.b, got)
		}
		// Round trip: the two halves parse back to a and b.
		as, bs, ok := strings.Cut(got, ".")
		if !ok {
			t.Fatalf("no dot in %q", got)
		}
		ga, errA := strconv.ParseUint(as, 10, 64)
		gb, errB := strconv.ParseUint(bs, 10, 64)
		if errA != nil || errB != nil || ga != tt.a || gb != tt.b {
			t.Errorf("round trip of %q = (%d, %v), (%d, %v), want %d, %d", got, ga, errA, gb, errB, tt.a, tt.b)
		}
		// Appending keeps what dst already holds.
		if got := string(AppendSocketID([]byte("id="), tt.a, tt.b)); got != "id="+tt.want {
			t.Errorf("AppendSocketID with prefix = %q, want %q", got, "id="+tt.want)
		}
	}
}
