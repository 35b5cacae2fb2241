package attack

import (
	"context"
	"errors"
	"net/http"

	"github.com/resoundhq/resound/protocol"
)

// The fault-injection markers of a gateway built with -tags faultinject
// (docs/security.md): each makes the code at one edge panic on purpose.
const (
	FaultPoller   = "resound-fault:panic-poller"   // in a client message
	FaultAsync    = "resound-fault-panic-async"    // a channel to subscribe to
	FaultDispatch = "resound-fault:panic-dispatch" // in a delivered event
	FaultHeader   = "X-Resound-Fault"              // "panic", on an HTTP request or upgrade
)

// PanicsResult is what each injected panic did to the clients.
type PanicsResult struct {
	// PollerClose and AsyncClose are the close codes of the connections
	// that sent the poller marker and subscribed to the async channel;
	// DispatchCloses those of the subscribers of the dispatch channel
	// (-1: no close frame).
	PollerClose, AsyncClose int
	DispatchCloses          []int
	// HTTPStatus is the answer to an API request with the fault header;
	// UpgradeStatus the answer to an upgrade with it (0: closed without
	// one, 101: upgraded).
	HTTPStatus, UpgradeStatus int
	// WitnessAlive is set when a connection open through all of it still
	// answers a pusher:ping.
	WitnessAlive bool
	Err          error
}

// Panics triggers every injected panic of a faultinject gateway in turn.
// dispatchSubscribers connections subscribe to channel and get the
// dispatch marker.
func Panics(ctx context.Context, t Target, channel string, dispatchSubscribers int, source string) PanicsResult {
	res := PanicsResult{PollerClose: -1, AsyncClose: -1}
	dial := DialOptions{Source: source}
	witness, err := t.Connect(ctx, dial)
	if err != nil {
		res.Err = err
		return res
	}
	defer witness.Close()

	c, err := t.Connect(ctx, dial)
	if err != nil {
		res.Err = err
		return res
	}
	if err := c.SendJSON(map[string]any{"event": protocol.EventPing, "data": map[string]any{"fault": FaultPoller}}); err == nil {
		res.PollerClose = c.AwaitClose(patience).Code
	}
	c.Close()

	if c, err = t.Connect(ctx, dial); err != nil {
		res.Err = err
		return res
	}
	if err := c.Subscribe(FaultAsync, "", ""); err == nil {
		res.AsyncClose = c.AwaitClose(patience).Code
	}
	c.Close()

	var subs Conns
	defer func() { subs.Close() }()
	for range dispatchSubscribers {
		s, err := t.Connect(ctx, dial)
		if err == nil {
			subs = append(subs, s)
			err = s.Subscribe(channel, "", "")
		}
		if err == nil {
			_, _, err = s.Await(protocol.EventSubscriptionSucceeded, channel, patience)
		}
		if err != nil {
			res.Err = err
			return res
		}
	}
	if r := t.API(source, false).Trigger([]string{channel}, "fault", FaultDispatch, ""); r.Status != http.StatusOK {
		res.Err = errors.New("the dispatch marker was not accepted: " + string(r.Body))
		return res
	}
	for _, s := range subs {
		res.DispatchCloses = append(res.DispatchCloses, s.AwaitClose(patience).Code)
	}

	api := t.API(source, false)
	api.Client.Transport = HeaderTransport{Base: api.Client.Transport, Header: http.Header{FaultHeader: {"panic"}}}
	res.HTTPStatus = api.Trigger([]string{channel}, "fault-http", "x", "").Status

	up, err := t.Dial(ctx, DialOptions{Source: source, Header: http.Header{FaultHeader: {"panic"}}})
	var se StatusError
	switch {
	case err == nil:
		res.UpgradeStatus = http.StatusSwitchingProtocols
		up.Close()
	case errors.As(err, &se):
		res.UpgradeStatus = int(se)
	}

	if err := witness.SendJSON(map[string]any{"event": protocol.EventPing, "data": map[string]any{}}); err == nil {
		_, _, err = witness.Await(protocol.EventPong, "", patience)
		res.WitnessAlive = err == nil
	}
	return res
}
