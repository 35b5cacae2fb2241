package cluster

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/resoundhq/resound/internal/wire"
)

// QuerySubject is where the HTTP API asks every gateway about its
// channels; each live gateway answers once. (internal/wire catalogues
// every subject and control message.)
const QuerySubject = wire.Query

// QueryRequest asks about one app's channels.
type QueryRequest = wire.QueryRequest

// QueryReply is one gateway's answer.
type QueryReply = wire.QueryReply

// QueryResult sums the replies.
type QueryResult struct {
	Channels    map[string]int
	Connections int
	// Complete is false when some live gateway did not answer in time.
	Complete bool
}

// Querier gathers answers from every live gateway.
type Querier struct {
	nc       *nats.Conn
	registry func(ctx context.Context) (map[string]bool, error)
	timeout  time.Duration
}

// NewQuerier returns a querier. live lists the gateways expected to
// answer; the querier waits for exactly those, or for the timeout.
func NewQuerier(nc *nats.Conn, live func(ctx context.Context) (map[string]bool, error), timeout time.Duration) *Querier {
	return &Querier{nc: nc, registry: live, timeout: timeout}
}

// Query asks every gateway and sums what they say. Unlike Reverb, which
// waits for as many replies as its Redis PUBLISH reached, it waits for the
// gateways the registry lists, so a subscriber that is not ready yet never
// turns a complete answer into a timeout.
func (q *Querier) Query(ctx context.Context, req QueryRequest) (QueryResult, error) {
	live, err := q.registry(ctx)
	if err != nil {
		return QueryResult{}, err
	}
	inbox := q.nc.NewRespInbox()
	sub, err := q.nc.SubscribeSync(inbox)
	if err != nil {
		return QueryResult{}, err
	}
	defer sub.Unsubscribe()
	b, _ := json.Marshal(req)
	if err := q.nc.PublishRequest(QuerySubject, inbox, b); err != nil {
		return QueryResult{}, err
	}
	res := QueryResult{Channels: map[string]int{}}
	seen := map[string]bool{}
	waiting := len(live) // live gateways that have not answered yet
	deadline := time.Now().Add(q.timeout)
	for waiting > 0 {
		wait := time.Until(deadline)
		if d, ok := ctx.Deadline(); ok && time.Until(d) < wait {
			wait = time.Until(d)
		}
		if wait <= 0 {
			break
		}
		m, err := sub.NextMsg(wait)
		if err != nil {
			break
		}
		var r QueryReply
		if json.Unmarshal(m.Data, &r) != nil || seen[r.Gateway] {
			continue
		}
		seen[r.Gateway] = true
		if live[r.Gateway] {
			waiting--
		}
		// A gateway that is not listed yet (it just started) still counts:
		// its subscribers are real.
		for ch, n := range r.Channels {
			res.Channels[ch] += n
		}
		res.Connections += r.Connections
	}
	res.Complete = true
	for id := range live {
		if !seen[id] {
			res.Complete = false
		}
	}
	return res, nil
}

// ReadySubject is where every gateway answers with its id. An answer
// proves that the gateway's connection to NATS is up again and, because
// nats.go sends a connection's subscriptions before anything else when it
// reconnects, that its delivery subscriptions are back in place.
const ReadySubject = wire.Ready

// readyRound is how long AwaitGateways waits for answers before it asks
// again: a gateway that reconnects between two rounds answers the next.
const readyRound = 200 * time.Millisecond

// AwaitGateways asks until every gateway live lists has answered on
// ReadySubject, or ctx ends, and reports whether all did. Workers call it
// after reconnecting to NATS: deliveries are core NATS, so a job published
// before a gateway has resubscribed would miss that gateway's clients and
// be acked all the same.
func AwaitGateways(ctx context.Context, nc *nats.Conn, live func(ctx context.Context) (map[string]bool, error)) bool {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return false
	}
	defer sub.Unsubscribe()
	seen := map[string]bool{}
	for ctx.Err() == nil {
		// The registry is read every round: right after a NATS restart
		// JetStream may not answer yet, and gateways come and go.
		want, err := live(ctx)
		if err != nil || nc.PublishRequest(ReadySubject, inbox, nil) != nil {
			select {
			case <-ctx.Done():
			case <-time.After(readyRound):
			}
			continue
		}
		round, cancel := context.WithTimeout(ctx, readyRound)
		for !covers(seen, want) {
			m, err := sub.NextMsgWithContext(round)
			if err != nil {
				break
			}
			seen[string(m.Data)] = true
		}
		cancel()
		if covers(seen, want) {
			return true
		}
	}
	return false
}

func covers(seen, want map[string]bool) bool {
	for id := range want {
		if !seen[id] {
			return false
		}
	}
	return true
}
