package gateway

import (
	"testing"
	"time"
)

func TestStormTrimDue(t *testing.T) {
	var st stormTrim
	now := time.Unix(1000, 0)
	tick := func(admitted int64, inProgress int64) bool {
		st.admitted.Store(admitted)
		now = now.Add(time.Second)
		return st.due(now, inProgress)
	}
	if tick(10, 0) {
		t.Fatal("trimmed after 10 handshakes")
	}
	if tick(1500, 400) || tick(3000, 0) {
		t.Fatal("trimmed while the storm was on")
	}
	if !tick(3010, 0) {
		t.Fatal("no trim once the storm was over")
	}
	if tick(3020, 0) {
		t.Fatal("trimmed twice for one storm")
	}
	// A second storm within trimEvery waits for it.
	if tick(5000, 0) || tick(5001, 0) {
		t.Fatal("trimmed again within trimEvery")
	}
	for range int(trimEvery / time.Second) {
		tick(5001, 0)
	}
	if st.trimmedAt != 5001 {
		t.Fatalf("trimmedAt %d, want the second storm trimmed once trimEvery had passed", st.trimmedAt)
	}
}
