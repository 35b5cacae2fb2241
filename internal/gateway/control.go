package gateway

import (
	"encoding/json"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/resoundhq/resound/internal/route"
	"github.com/resoundhq/resound/internal/wire"
)

// controlTarget is what the control plane asks of the gateway: the
// Pusher-level answers to each control message. The control plane decodes
// and routes; the gateway knows its connections and channels.
type controlTarget interface {
	// terminate closes every connection of a user of an app.
	terminate(req wire.TerminateRequest)
	// answerQuery is this gateway's view of an app's channels; false when
	// the gateway does not serve the app.
	answerQuery(q wire.QueryRequest) (wire.QueryReply, bool)
	// userStateChanged tells the connections watching a user (subject is
	// the user's user-state subject) that it went online or offline.
	userStateChanged(subject string, st wire.UserState)
}

// controlPlane owns the gateway's control subscriptions: the resound.ctl
// subjects every gateway acts on (terminate, query, ready: see
// internal/wire for the catalogue) and one user-state subject per user
// that a local connection watches (watchlists). It decodes each message
// and dispatches it to the gateway through controlTarget, recovering a
// panic at that edge.
type controlPlane struct {
	nc        *nats.Conn
	gatewayID string
	target    controlTarget
	recover   func() // deferred around every dispatch
	log       zerolog.Logger

	subs []*nats.Subscription

	mu      sync.Mutex
	watched map[string]*nats.Subscription // by user-state subject
	// userStates queues the watched users' transitions for run, so that a
	// slow write to watchers never holds up NATS's delivery goroutine.
	userStates chan *nats.Msg
}

func newControlPlane(nc *nats.Conn, gatewayID string, target controlTarget, recover func(), log zerolog.Logger) *controlPlane {
	return &controlPlane{
		nc: nc, gatewayID: gatewayID, target: target, recover: recover, log: log,
		watched:    map[string]*nats.Subscription{},
		userStates: make(chan *nats.Msg, 1<<12),
	}
}

// start subscribes to the control subjects.
func (cp *controlPlane) start() error {
	id := []byte(cp.gatewayID)
	for _, s := range []struct {
		subject string
		f       nats.MsgHandler
	}{
		{wire.Terminate, cp.onTerminate},
		{wire.Query, cp.onQuery},
		{wire.Ready, func(m *nats.Msg) { defer cp.recover(); _ = m.Respond(id) }},
	} {
		sub, err := cp.nc.Subscribe(s.subject, s.f)
		if err != nil {
			return err
		}
		cp.subs = append(cp.subs, sub)
	}
	return nil
}

// stop unsubscribes from the control subjects.
func (cp *controlPlane) stop() {
	for _, sub := range cp.subs {
		_ = sub.Unsubscribe()
	}
	cp.subs = nil
}

// Terminate closes every connection of a user of an app on every gateway:
// connections signed in as the user (Pusher) and connections whose
// presence identity is the user (Reverb).
func Terminate(nc *nats.Conn, appID, userID string) error {
	b, _ := json.Marshal(wire.TerminateRequest{App: appID, UserID: userID})
	if err := nc.Publish(wire.Terminate, b); err != nil {
		return err
	}
	return nc.Flush()
}

func (cp *controlPlane) onTerminate(m *nats.Msg) {
	defer cp.recover()
	var req wire.TerminateRequest
	if json.Unmarshal(m.Data, &req) != nil || req.UserID == "" {
		return
	}
	cp.target.terminate(req)
}

// onQuery replies with this gateway's view of an app's channels, for the
// HTTP API's cluster-wide queries.
func (cp *controlPlane) onQuery(m *nats.Msg) {
	defer cp.recover()
	var q wire.QueryRequest
	if json.Unmarshal(m.Data, &q) != nil || m.Reply == "" {
		return
	}
	r, ok := cp.target.answerQuery(q)
	if !ok {
		return
	}
	b, _ := json.Marshal(r)
	_ = m.Respond(b)
}

// userStateSubject carries a user's online/offline transitions.
func userStateSubject(appID, userID string) string {
	return wire.UserStatePrefix + route.EscapeToken(appID) + "." + route.EscapeToken(userID)
}

// publishUserState tells the watchers of a user, on every gateway, that
// it went online or offline.
func (cp *controlPlane) publishUserState(appID, userID string, online bool) {
	b, _ := json.Marshal(wire.UserState{UserID: userID, Online: online})
	if err := cp.nc.Publish(userStateSubject(appID, userID), b); err != nil {
		cp.log.Warn().Err(err).Msg("publishing user state")
	}
}

// watch subscribes to a user-state subject, for its first local watcher.
func (cp *controlPlane) watch(subject string) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.watched[subject] != nil {
		return nil
	}
	sub, err := cp.nc.ChanSubscribe(subject, cp.userStates)
	if err != nil {
		return err
	}
	cp.watched[subject] = sub
	return nil
}

// unwatch drops a user-state subscription, once its last local watcher
// has gone.
func (cp *controlPlane) unwatch(subject string) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if sub := cp.watched[subject]; sub != nil {
		_ = sub.Unsubscribe()
		delete(cp.watched, subject)
	}
}

// run forwards watched users' transitions to the gateway until done.
func (cp *controlPlane) run(done <-chan struct{}) {
	for {
		select {
		case m := <-cp.userStates:
			cp.onUserState(m)
		case <-done:
			return
		}
	}
}

func (cp *controlPlane) onUserState(m *nats.Msg) {
	defer cp.recover()
	var st wire.UserState
	if json.Unmarshal(m.Data, &st) != nil {
		return
	}
	cp.target.userStateChanged(m.Subject, st)
}
