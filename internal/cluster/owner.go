package cluster

import "hash/fnv"

// Owner picks a lane's worker by rendezvous hashing over the live
// workers: every worker computes the same answer from the same live set,
// and a worker joining or leaving moves only the lanes it wins or held.
// The job partitions (internal/worker) and the webhook lanes
// (internal/webhook) are both shared out with it, so lane k of either
// goes to the same worker.
//
// The FNV hash is finished with a mixer: the lane's bytes come last, and
// FNV-1a's last multiplications carry them only into the low bits, so raw
// FNV scores ranked the workers the same way for every lane, and one
// worker won them all.
func Owner(k int, live map[string]bool) string {
	best, bestScore := "", uint64(0)
	for id := range live {
		h := fnv.New64a()
		h.Write([]byte(id))
		h.Write([]byte{'/', byte(k), byte(k >> 8)})
		if s := mix64(h.Sum64()); best == "" || s > bestScore || (s == bestScore && id < best) {
			best, bestScore = id, s
		}
	}
	return best
}

// mix64 is MurmurHash3's 64-bit finalizer: every input bit reaches every
// output bit.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
