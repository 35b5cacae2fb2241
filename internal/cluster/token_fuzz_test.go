package cluster_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/resoundhq/resound/internal/cluster"
)

// kvKeyRe and the dot rules below are what nats.go's jetstream package
// accepts as a key (keyValid in jetstream/kv.go).
var kvKeyRe = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

func validKVKey(k string) bool {
	return kvKeyRe.MatchString(k) && k[0] != '.' && k[len(k)-1] != '.' && !strings.Contains(k, "..")
}

// FuzzToken checks that any two names (an app id and a channel, a user id)
// make a key JetStream accepts, that splits at its one dot into tokens
// that give the names back, and that ParseToken takes any string without
// panicking.
func FuzzToken(f *testing.F) {
	for _, name := range awkwardNames {
		f.Add(name, "presence-room.1")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		k := cluster.Key(a, b)
		if !validKVKey(k) {
			t.Fatalf("Key(%q, %q) = %q is not a valid key", a, b, k)
		}
		parts := strings.Split(k, ".")
		if len(parts) != 2 || parts[0] != cluster.Token(a) || parts[1] != cluster.Token(b) {
			t.Fatalf("Key(%q, %q) = %q does not split into its two tokens", a, b, k)
		}
		for i, name := range []string{a, b} {
			if back, err := cluster.ParseToken(parts[i]); err != nil || back != name {
				t.Fatalf("ParseToken(%q) = %q, %v, want %q", parts[i], back, err, name)
			}
		}
		// Keys listed from a bucket are read back with ParseToken: any
		// string gives an error or a name whose token reads back the same.
		if name, err := cluster.ParseToken(a); err == nil {
			if again, err := cluster.ParseToken(cluster.Token(name)); err != nil || again != name {
				t.Fatalf("%q read as %q, whose token reads as %q, %v", a, name, again, err)
			}
		}
	})
}
