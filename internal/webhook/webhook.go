// Package webhook carries Pusher's webhooks from the gateways that see a
// transition to the apps' receivers, through JetStream, so that no gateway
// ever waits for a receiver.
//
//   - A gateway that makes a cluster-wide transition (a channel's first
//     subscriber anywhere, a presence user's last connection, a client
//     event, a cache miss, a new subscription count) appends a Record to
//     the RESOUND_WEBHOOKS stream, on its channel's lane (Subject). The
//     stores decide the transitions with compare-and-set, so exactly one
//     gateway records each, whatever the number of gateways.
//   - A worker that owns the lane reads its records in order, holds
//     channel_vacated and member_removed for RESOUND_WEBHOOK_DELAY
//     (dropping them with the occupied or added that undoes them), batches
//     per receiver, signs as Pusher does and POSTs; a receiver's failures
//     are retried with backoff for RESOUND_WEBHOOK_RETRY_FOR and hold back
//     only that receiver's later webhooks. A record is acked once every
//     receiver that wants it has it (or gave up on it), so a worker that
//     dies loses nothing: its records are delivered again.
package webhook

import (
	"hash/fnv"
	"strconv"

	"github.com/resoundhq/resound/internal/wire"
	"github.com/resoundhq/resound/protocol"
)

// StreamName is the JetStream stream of webhook records.
const StreamName = "RESOUND_WEBHOOKS"

// Record is one transition a gateway saw, as stored in the stream (JSON).
type Record struct {
	// TimeMS is when the transition happened (unix milliseconds).
	TimeMS int64 `json:"time_ms"`
	// Rev orders the records of one channel made by different gateways:
	// the revision of the shared-state key whose compare-and-set made the
	// transition (0 when no key did, as for client events).
	Rev   uint64                `json:"rev,omitempty"`
	Event protocol.WebhookEvent `json:"event"`
}

// Lane is the lane of an app's channel: every record of a channel goes to
// the same lane, so they are read in the order they were stored.
func Lane(app, channel string, lanes int) int {
	h := fnv.New64a()
	h.Write([]byte(app))
	h.Write([]byte{0})
	h.Write([]byte(channel))
	return int(h.Sum64() % uint64(lanes))
}

// Subject is where a record of an app's channel is published:
// resound.hooks.<app>.<lane>.
func Subject(app, channel string, lanes int) string {
	return wire.HooksPrefix + app + "." + strconv.Itoa(Lane(app, channel, lanes))
}

// LaneFilter is the subject filter of one lane, across apps.
func LaneFilter(lane int) string {
	return wire.HooksPrefix + "*." + strconv.Itoa(lane)
}

// ConsumerName is the durable consumer of one lane.
func ConsumerName(lane int) string { return "resound-webhooks-" + strconv.Itoa(lane) }
