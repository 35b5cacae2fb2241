package gateway

import "testing"

func TestTLSReactor(t *testing.T) {
	for _, tc := range []struct {
		requested, want string
		ok              bool
	}{
		{"", ReactorPortable, true},
		{ReactorAuto, ReactorPortable, true},
		{ReactorPortable, ReactorPortable, true},
		{ReactorEpoll, "", false},
		{ReactorKqueue, "", false},
	} {
		got, err := tlsReactor(tc.requested)
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("tlsReactor(%q) = %q, %v; want %q, ok %v", tc.requested, got, err, tc.want, tc.ok)
		}
	}
}

func TestLooksLikeHTTP(t *testing.T) {
	for hdr, want := range map[string]bool{
		"GET /": true, "POST ": true, "OPTIO": true, "\x16\x03\x01\x02\x00": false, "SSH-2": false,
	} {
		var b [5]byte
		copy(b[:], hdr)
		if got := looksLikeHTTP(b); got != want {
			t.Errorf("looksLikeHTTP(%q) = %v", hdr, got)
		}
	}
}
